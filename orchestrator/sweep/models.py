"""The ``tune:`` section of a sweep spec, and :class:`SweepSpec` (a job spec plus that section).

Plain pydantic models (``extra="forbid"``, immutable, no I/O) like the job spec's. The search
space's keys are job spec field paths; whether each path exists and each value fits the field is
checked by :mod:`orchestrator.sweep.loader`, which knows the base job spec.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.metrics import names
from orchestrator.spec.models import CrossFieldError, JobSpec
from orchestrator.sweep.space import Dimension, ExpressionError, grid_size, parse_expression

#: Metrics a trial reports each epoch (the sweep's ``metric`` must be one of them).
TRIAL_METRICS: tuple[str, ...] = (
    names.VAL_ACCURACY, names.VAL_LOSS, names.TRAIN_ACCURACY, names.TRAIN_LOSS,
    names.GENERATOR_LOSS, names.DISCRIMINATOR_LOSS,
)


#: The most trials one sweep may run (num_samples times the grid's combinations).
MAX_TRIALS = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


class AshaScheduler(_Model):
    """Asynchronous successive halving: stop the worse trials at each rung (epochs grace, grace*rf, ...)."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(default=1, ge=1, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(default=3.0, gt=1, le=100, description="Keep the best 1/rf at each rung.")
    brackets: int = Field(default=1, ge=1, le=10, description="Hyperband brackets.")
    max_t: int | None = Field(default=None, ge=1, description="Epochs a trial may train at most (default: training.epochs).")


class PbtScheduler(_Model):
    """Population-based training: every few epochs, the worse trials copy a better one and perturb."""

    type: Literal["pbt"] = "pbt"
    perturbation_interval: int = Field(default=2, ge=1, description="Epochs between exploit/explore steps.")
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5, description="Bottom fraction that copies the top.")
    resample_probability: float = Field(default=0.25, ge=0, le=1, description="Resample instead of perturbing.")


class FifoScheduler(_Model):
    """Every trial trains all its epochs (no early stopping)."""

    type: Literal["fifo"] = "fifo"


SchedulerSpec = Annotated[AshaScheduler | PbtScheduler | FifoScheduler, Field(discriminator="type")]


class TuneSpec(_Model):
    """What to search, how to pick the winner, how to schedule trials."""

    search_space: dict[str, str] = Field(
        min_length=1,
        max_length=64,
        description="Job spec field path -> sampler, e.g. training.learning_rate: loguniform(1e-4, 1e-1).",
    )
    metric: str = Field(default=names.VAL_ACCURACY, description="The epoch metric that ranks trials.")
    mode: Literal["max", "min"] = Field(default="max", description="Whether a higher metric is better.")
    num_samples: int = Field(default=4, ge=1, le=10000,
                             description="Trials to sample (times the grid's size when grid() is used).")
    max_concurrent: int = Field(default=2, ge=1, le=1024, description="Trials running at once.")
    scheduler: SchedulerSpec = AshaScheduler()
    search: Literal["random", "grid", "optuna"] = Field(
        default="random",
        description="random: sample each dimension; grid: every choice()/grid() value, exhaustively; "
        "optuna: Optuna's TPE (needs `pip install optuna`).",
    )
    trial_cpus: float = Field(
        default=0.1, gt=0, le=64,
        description="CPUs of each trial's own process (it runs the trial's Ray Train driver; its "
        "workers take `resources:` of the job spec on top).",
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Seed of the search (random, optuna).")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in TRIAL_METRICS:
            raise ValueError(f"unknown metric; use one of {', '.join(TRIAL_METRICS)}")
        return value

    @model_validator(mode="after")
    def _expressions(self) -> TuneSpec:
        dims = {}
        for path, text in self.search_space.items():
            try:
                dims[path] = parse_expression(text)
            except ExpressionError as exc:
                raise CrossFieldError(f"search_space.{path}", exc.message, fix=exc.fix) from None
        for path, dim in dims.items():
            if self.search == "grid" and not dim.is_finite:
                raise CrossFieldError(
                    f"search_space.{path}", f"search: grid needs listed values; {dim.text} is a range",
                    fix="use grid([...]) or choice([...]) for this field, or search: random",
                )
            if self.search == "optuna" and dim.is_grid:
                raise CrossFieldError(
                    f"search_space.{path}", "Optuna samples; it does not expand grid([...])",
                    fix=f"use choice({list(dim.values)!r}) instead, or search: random",
                )
        total = self.num_samples * grid_size(dims, grid_all=self.search == "grid")
        if total > MAX_TRIALS:
            raise CrossFieldError(
                "num_samples",
                f"the sweep would run {total:,} trials (num_samples {self.num_samples} times "
                f"{total // self.num_samples:,} grid combinations); a sweep runs at most {MAX_TRIALS:,}",
                fix="list fewer grid()/choice() values or lower num_samples; to explore a large space, "
                "use search: random (or optuna) with num_samples trials",
            )
        if isinstance(self.scheduler, PbtScheduler) and self.search == "optuna":
            raise CrossFieldError("scheduler", "PBT chooses its own hyperparameters; it does not combine with Optuna",
                                  fix="use search: random with scheduler pbt")
        return self

    @property
    def dimensions(self) -> dict[str, Dimension]:
        return {path: parse_expression(text) for path, text in self.search_space.items()}

    @property
    def total_trials(self) -> int:
        """Trials the sweep runs: num_samples times the grid's combinations."""
        return self.num_samples * grid_size(self.dimensions, grid_all=self.search == "grid")


class SweepSpec(_Model):
    """A sweep: the base job (every trial starts from it) and the ``tune:`` section."""

    job: JobSpec
    tune: TuneSpec

    @property
    def name(self) -> str:
        return self.job.name

    def max_epochs(self) -> int:
        """Epochs a trial may train: the ASHA scheduler's max_t, else the job's epochs."""
        sched = self.tune.scheduler
        if isinstance(sched, AshaScheduler) and sched.max_t is not None:
            return min(sched.max_t, self.job.training.epochs)
        return self.job.training.epochs

    def to_record_spec(self) -> dict[str, object]:
        """What the job store keeps for a sweep: the job spec's fields plus ``tune``."""
        return {**self.job.model_dump(mode="json"), "tune": self.tune.model_dump(mode="json")}

    @classmethod
    def from_record_spec(cls, data: dict[str, object]) -> SweepSpec:
        job = {k: v for k, v in data.items() if k != "tune"}
        return cls(job=JobSpec.model_validate(job), tune=TuneSpec.model_validate(data["tune"]))


def is_sweep_spec(data: dict[str, object]) -> bool:
    """True for a stored spec of a sweep (it has a ``tune`` section)."""
    return isinstance(data, dict) and "tune" in data
