"""Every metric and TensorBoard tag name, defined once.

Epoch metrics flow from the workers to the driver as plain dicts keyed by the ``EPOCH_*``
names below; the TensorBoard writer and the terminal UI map those keys through
:data:`TENSORBOARD_TAGS`, so both frameworks produce the same tags.
"""

from __future__ import annotations

# Keys of an epoch report (worker -> driver), also the keys of `--output json` metrics.
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
LEARNING_RATE = "learning_rate"
SAMPLES_PER_SECOND = "samples_per_second"
EPOCH_SECONDS = "epoch_seconds"
CHECKPOINT_SECONDS = "checkpoint_seconds"
GENERATOR_LOSS = "generator_loss"  # gan
DISCRIMINATOR_LOSS = "discriminator_loss"  # gan
#: gan: share of generated samples a classifier trained on the real data gives one class at >= 0.8
CONFIDENT_SAMPLES = "confident_samples"
#: gan: the same share for the real validation samples (what a perfect generator would reach)
CONFIDENT_REAL = "confident_real"
#: TensorBoard image tag of a gan's grid of samples (one per epoch)
SAMPLES_IMAGE_TAG = "samples/grid"

#: Epoch report key -> TensorBoard scalar tag (the same in torch and tensorflow jobs).
TENSORBOARD_TAGS: dict[str, str] = {
    TRAIN_LOSS: "loss/train",
    VAL_LOSS: "loss/validation",
    TRAIN_ACCURACY: "accuracy/train",
    VAL_ACCURACY: "accuracy/validation",
    LEARNING_RATE: "optimizer/learning_rate",
    SAMPLES_PER_SECOND: "throughput/samples_per_second",
    EPOCH_SECONDS: "time/epoch_seconds",
    CHECKPOINT_SECONDS: "time/checkpoint_seconds",
    GENERATOR_LOSS: "loss/generator",
    DISCRIMINATOR_LOSS: "loss/discriminator",
}
#: Written once at the end of a job, at the last epoch's step.
FINAL_TENSORBOARD_TAGS: dict[str, str] = {
    TEST_LOSS: "loss/test",
    TEST_ACCURACY: "accuracy/test",
    CONFIDENT_SAMPLES: "quality/confident_samples",
    CONFIDENT_REAL: "quality/confident_real",
}


# -- Prometheus ---------------------------------------------------------------------------------
# Every Prometheus metric the project exports. Labels are low-cardinality only: job, framework,
# queue, pool, accelerator, state -- never a step number or a path.

PROMETHEUS_PREFIX = "orchestrator_"


class PromMetric:
    """One exported metric: full name, type, help text and label names."""

    def __init__(self, short: str, kind: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = PROMETHEUS_PREFIX + short
        self.kind = kind
        self.help = help
        self.labels = labels

    def __repr__(self) -> str:
        return f"PromMetric({self.name!r})"


JOB_LABELS = ("job", "framework")

JOB_STATE = PromMetric("job_state", "gauge", "1 for the job's current state, 0 for the others",
                       JOB_LABELS + ("state",))
JOB_EPOCH = PromMetric("epoch", "gauge", "Last completed epoch", JOB_LABELS)
JOB_STEP = PromMetric("step", "gauge", "Global training step (optimizer steps)", JOB_LABELS)
JOB_STEP_LOSS = PromMetric("step_loss", "gauge", "Training loss of the latest step seen", JOB_LABELS)
JOB_TRAIN_LOSS = PromMetric("train_loss", "gauge", "Mean training loss of the last epoch", JOB_LABELS)
JOB_VAL_LOSS = PromMetric("validation_loss", "gauge", "Validation loss after the last epoch", JOB_LABELS)
JOB_TRAIN_ACCURACY = PromMetric("train_accuracy", "gauge", "Training accuracy of the last epoch", JOB_LABELS)
JOB_VAL_ACCURACY = PromMetric("validation_accuracy", "gauge", "Validation accuracy after the last epoch",
                              JOB_LABELS)
JOB_SAMPLES_PER_SECOND = PromMetric("samples_per_second", "gauge", "Training throughput of the last epoch",
                                    JOB_LABELS)
JOB_LEARNING_RATE = PromMetric("learning_rate", "gauge", "Learning rate at the end of the last epoch",
                               JOB_LABELS)
JOB_CHECKPOINT_SECONDS = PromMetric("checkpoint_write_seconds", "histogram", "Time to write one checkpoint",
                                    JOB_LABELS)
JOB_RESTARTS = PromMetric("restarts_total", "counter", "Worker-group restarts after a failure", JOB_LABELS)
JOB_RECOVERY_SECONDS = PromMetric("recovery_seconds", "histogram",
                                  "Failure detected to first training step after restore", JOB_LABELS)
JOB_LOST_STEPS = PromMetric("lost_steps_total", "counter", "Training steps redone after failures", JOB_LABELS)
JOB_LAST_PROGRESS = PromMetric("last_progress_timestamp_seconds", "gauge",
                               "Unix time of the latest training progress seen", JOB_LABELS)
JOB_ENDED = PromMetric("job_end_timestamp_seconds", "gauge",
                       "Unix time the job reached its final state (succeeded, failed, cancelled)", JOB_LABELS)

QUEUE_JOBS = PromMetric("queue_jobs", "gauge", "Jobs per queue and state (queued, running)", ("queue", "state"))
QUEUE_OLDEST_WAIT = PromMetric("queue_oldest_wait_seconds", "gauge", "How long the oldest queued job has waited",
                               ("queue",))
POOL_ACCELERATORS = PromMetric("pool_accelerators_total", "gauge", "Accelerators (or CPUs) in a pool",
                               ("pool", "accelerator"))
POOL_ALLOCATED = PromMetric("pool_accelerators_allocated", "gauge", "Accelerators (or CPUs) allocated to jobs",
                            ("pool", "accelerator"))
SCHEDULING_SECONDS = PromMetric("scheduling_decision_seconds", "histogram", "Time of one scheduling pass", ())
PREEMPTIONS = PromMetric("preemptions_total", "counter", "Jobs preempted (checkpointed and requeued)", ("queue",))

ALL_PROMETHEUS_METRICS: tuple[PromMetric, ...] = (
    JOB_STATE, JOB_EPOCH, JOB_STEP, JOB_STEP_LOSS, JOB_TRAIN_LOSS, JOB_VAL_LOSS, JOB_TRAIN_ACCURACY,
    JOB_VAL_ACCURACY, JOB_SAMPLES_PER_SECOND, JOB_LEARNING_RATE, JOB_CHECKPOINT_SECONDS, JOB_RESTARTS,
    JOB_RECOVERY_SECONDS, JOB_LOST_STEPS, JOB_LAST_PROGRESS, JOB_ENDED, QUEUE_JOBS, QUEUE_OLDEST_WAIT, POOL_ACCELERATORS,
    POOL_ALLOCATED,
    SCHEDULING_SECONDS, PREEMPTIONS,
)

#: Epoch report key -> the per-job gauge that carries it.
EPOCH_GAUGES: dict[str, PromMetric] = {
    TRAIN_LOSS: JOB_TRAIN_LOSS,
    VAL_LOSS: JOB_VAL_LOSS,
    TRAIN_ACCURACY: JOB_TRAIN_ACCURACY,
    VAL_ACCURACY: JOB_VAL_ACCURACY,
    SAMPLES_PER_SECOND: JOB_SAMPLES_PER_SECOND,
    LEARNING_RATE: JOB_LEARNING_RATE,
}

# -- Kubernetes operator (orchestrator operator) ------------------------------------------------
# Pool capacity on Kubernetes reuses POOL_ACCELERATORS / POOL_ALLOCATED above.
OPERATOR_RECONCILES = PromMetric("operator_reconciles_total", "counter",
                                 "TrainingJob reconciliations, by outcome (state: ok, retry, error)", ("state",))
OPERATOR_RECONCILE_SECONDS = PromMetric("operator_reconcile_seconds", "histogram",
                                        "Time of one TrainingJob reconciliation", ())
OPERATOR_TRAININGJOBS = PromMetric("operator_trainingjobs", "gauge",
                                   "TrainingJobs the operator knows, by phase (state: Pending, Running, ...)",
                                   ("state",))
OPERATOR_RAYJOBS_CREATED = PromMetric("operator_rayjobs_created_total", "counter",
                                      "RayJobs the operator created, by node pool", ("pool",))
OPERATOR_PLACEMENT_WAITS = PromMetric("operator_placement_waits_total", "counter",
                                      "Times a TrainingJob was left waiting by the scheduler, by queue", ("queue",))
OPERATOR_POOLS = PromMetric("operator_node_pools", "gauge", "Node pools the operator schedules onto", ())

ALL_PROMETHEUS_METRICS += (
    OPERATOR_RECONCILES, OPERATOR_RECONCILE_SECONDS, OPERATOR_TRAININGJOBS, OPERATOR_RAYJOBS_CREATED,
    OPERATOR_PLACEMENT_WAITS, OPERATOR_POOLS,
)
