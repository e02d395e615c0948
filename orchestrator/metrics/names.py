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
}
#: Written once at the end of a job, at the last epoch's step.
FINAL_TENSORBOARD_TAGS: dict[str, str] = {
    TEST_LOSS: "loss/test",
    TEST_ACCURACY: "accuracy/test",
}
