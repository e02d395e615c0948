"""What the sweep driver hands Ray Tune: the scheduler, the search, the concurrency that fits, and
Tune's own output and loggers turned down. Ray is imported inside the functions (run path only).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from orchestrator.errors import BackendError
from orchestrator.sweep.models import AshaScheduler, PbtScheduler, SweepSpec


def _largest(sweep: SweepSpec, field: str, base: float) -> float:
    """The largest value a trial can have for ``resources.<field>`` (searched or not)."""
    dim = sweep.tune.dimensions.get(f"resources.{field}")
    if dim is None:
        return base
    return max(float(v) for v in dim.samples_for_validation() if isinstance(v, (int, float)))


def check_fits(sweep: SweepSpec, resources: dict[str, float]) -> int:
    """Refuse a sweep with a trial the cluster can never place (it would wait forever); return how
    many trials fit at once. Searched ``resources.*`` fields count at their largest values."""
    r = sweep.job.resources
    workers = _largest(sweep, "workers", r.workers)
    cpus = _largest(sweep, "cpus_per_worker", r.cpus_per_worker)
    gpus = _largest(sweep, "gpus_per_worker", r.gpus_per_worker)
    searched = [p for p in sweep.tune.dimensions if p.startswith("resources.")]
    where = f" (at the largest values of {', '.join(searched)})" if searched else ""
    per_trial = workers * cpus + sweep.tune.trial_cpus
    have = resources.get("CPU", 0.0)
    if per_trial > have + 1e-9:
        raise BackendError(
            "one trial does not fit this Ray cluster",
            reasons=[f"a trial needs {workers:g} x {cpus:g} CPUs for its workers + "
                     f"{sweep.tune.trial_cpus:g} for itself = {per_trial:g}{where}; the cluster has {have:g}"],
            fix="lower resources.workers / cpus_per_worker (fractions such as 0.5 are fine) or tune.trial_cpus"
                + (", or narrow the search over " + ", ".join(searched) if searched else ""),
        )
    need_gpu = workers * gpus
    if need_gpu > resources.get("GPU", 0.0) + 1e-9 and (r.uses_gpu or gpus > 0):
        raise BackendError("one trial does not fit this Ray cluster",
                           reasons=[f"a trial needs {need_gpu:g} GPUs; the cluster has {resources.get('GPU', 0):g}"],
                           fix="lower resources.gpus_per_worker or run on a cluster with GPUs")
    return max(1, min(sweep.tune.max_concurrent, int((have + 1e-9) // per_trial)))


def build_scheduler(sweep: SweepSpec, sweep_id: str) -> Any:
    """Ray Tune's trial scheduler for the ``tune.scheduler`` section (time unit: epochs)."""
    from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining

    from orchestrator.sweep.schedulers import PromptASHAScheduler
    from orchestrator.sweep.space import to_ray

    sched = sweep.tune.scheduler
    if isinstance(sched, AshaScheduler):
        return PromptASHAScheduler(sweep_id, time_attr="epoch", max_t=sweep.max_epochs(),
                                   grace_period=sched.grace_period, reduction_factor=sched.reduction_factor,
                                   brackets=sched.brackets)
    if isinstance(sched, PbtScheduler):
        mutations = {path: (dim.values if dim.is_finite else to_ray(dim))
                     for path, dim in sweep.tune.dimensions.items()}
        dims = dict(sweep.tune.dimensions)

        def within_bounds(config: dict[str, Any]) -> dict[str, Any]:
            # PBT perturbs by x0.8 / x1.2 without bounds: a momentum of 0.95 would become 1.14, which
            # the job spec refuses (the trial would fail); keep every value inside its range
            return {key: dims[key].clip(value) if key in dims else value for key, value in config.items()}

        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=sched.perturbation_interval,
                                       quantile_fraction=sched.quantile_fraction,
                                       resample_probability=sched.resample_probability,
                                       hyperparam_mutations=mutations, custom_explore_fn=within_bounds)
    return FIFOScheduler()


def build_search(sweep: SweepSpec, max_concurrent: int) -> tuple[dict[str, Any], Any]:
    """(param_space, search algorithm) for ``tune.search``, limited to ``max_concurrent`` trials at once.

    Tune's ``max_concurrent_trials`` applies only to a ``Searcher``; the random/grid generator takes
    its own ``max_concurrent`` (Tune logs that it ignores the other and runs every trial at once).
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from orchestrator.sweep.space import to_ray

    grid_all = sweep.tune.search == "grid"
    space = {path: to_ray(dim, grid_all=grid_all) for path, dim in sweep.tune.dimensions.items()}
    if sweep.tune.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return space, ConcurrencyLimiter(OptunaSearch(seed=sweep.tune.seed), max_concurrent=max_concurrent)
    return space, BasicVariantGenerator(random_state=sweep.tune.seed, max_concurrent=max_concurrent)


def quiet_tune() -> None:
    """Tune's own console output off (our live table replaces it), before Tune is imported.

    ``RAY_AIR_NEW_OUTPUT=0`` with ``verbose=0`` silences Tune's progress boxes; Tune's automatic
    TensorBoardX logger is replaced by the JSON and CSV ones (the sweep writes its own TensorBoard
    hparams; tensorboardX's hparams path loads TensorFlow into the driver when it is installed).
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a trial that fails before its first epoch ends with a result without the metric; the sweep
    # reports that trial as failed instead of Tune aborting every other trial
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # on an interrupt Tune tells the user to resume with its own API; ours says `orchestrator resume`
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _TuneResumeAdvice) for f in tune_log.filters):
        tune_log.addFilter(_TuneResumeAdvice())


class _TuneResumeAdvice(logging.Filter):
    """Drops Tune's "Stop signal received ..." and "... Tuner.restore(...)" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore" not in text and "Stop signal received" not in text


def result_loggers() -> list[Any]:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]
