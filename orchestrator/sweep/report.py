"""Pure functions over a sweep's trials: their rows, the leaderboard, the budget early stopping saved,
and the best trial's job spec. Input is each trial's ``trial.json`` (written by the trial itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.spec.loader import dump_yaml


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table, the leaderboard and ``--output json`` show it."""

    trial_id: str
    params: dict[str, Any]
    state: str  # running, succeeded, stopped (early, by the scheduler), interrupted (the sweep stopped), failed
    epochs_trained: int
    metric: float | None  # the sweep's metric at the trial's last epoch
    best_metric: float | None  # its best value over the trial's epochs
    starts: int = 1
    final: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    model_dir: str | None = None

    @property
    def stopped_early(self) -> bool:
        return self.state == "stopped"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "stopped_early": self.stopped_early}


def trial_row(trial: Mapping[str, Any], metric: str, mode: str, max_epochs: int) -> TrialRow:
    """A row from a trial's ``trial.json``; a trial that ended before ``max_epochs`` was stopped early."""
    epochs = {int(k): v for k, v in (trial.get("epochs") or {}).items()}
    values = [epochs[e][metric] for e in sorted(epochs) if metric in epochs[e]]
    last = max(epochs, default=0)
    state = str(trial.get("state", "pending"))
    if state in ("succeeded", "stopped"):
        # by what it trained: a stop that reached the workers after their last epoch stopped nothing
        state = "stopped" if last < max_epochs else "succeeded"
    pick = max if mode == "max" else min
    return TrialRow(
        trial_id=str(trial["trial_id"]),
        params=dict(trial.get("params") or {}),
        state=state,
        epochs_trained=len(epochs),
        metric=values[-1] if values else None,
        best_metric=pick(values) if values else None,
        starts=int(trial.get("starts", 1)),
        final=dict(trial.get("final") or {}),
        checkpoint=trial.get("checkpoint"),
        model_dir=trial.get("model_dir"),
    )


def leaderboard(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Trials best first by the metric at their last epoch; trials without a value last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.metric is None, sign * (r.metric or 0.0), r.trial_id))


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The winner: the best trial that trained all its epochs, else the best one at all."""
    ranked = [r for r in leaderboard(rows, mode) if r.metric is not None]
    finished = [r for r in ranked if r.state == "succeeded"]
    pool = finished or ranked
    return pool[0] if pool else None


def budget(rows: list[TrialRow], total_trials: int, epochs: int) -> dict[str, Any]:
    """Trial-epochs trained against the full sweep's (every trial training every epoch).

    Saved: the epochs that trials stopped early by the scheduler did not train. The rest of what
    was not trained (trials interrupted with the sweep, failed, or not started) is
    ``trial_epochs_not_trained``: an interrupted sweep saved nothing by stopping early.
    """
    used = sum(r.epochs_trained for r in rows)
    full = total_trials * epochs
    saved = sum(max(epochs - r.epochs_trained, 0) for r in rows if r.stopped_early)
    return {
        "trial_epochs_used": used,
        "trial_epochs_full": full,
        "trial_epochs_saved": saved,
        "saved_fraction": round(saved / full, 4) if full else 0.0,
        "trial_epochs_not_trained": max(full - used - saved, 0),
        "trials_stopped_early": sum(1 for r in rows if r.stopped_early),
    }


def best_spec_data(spec: Mapping[str, Any], sweep_name: str) -> dict[str, Any]:
    """The best trial's job spec as a submittable job: its own name, no sweep-only state."""
    data = dict(spec)
    suffix = "-best"
    data["name"] = (sweep_name[: 53 - len(suffix)].rstrip("-") + suffix)
    checkpoint = dict(data.get("checkpoint") or {})
    checkpoint["dir"] = None  # a new job keeps its own checkpoints
    data["checkpoint"] = checkpoint
    return data


def best_spec_yaml(spec: Mapping[str, Any], row: TrialRow, sweep_id: str, metric: str) -> str:
    """The best trial's spec as YAML, with a header saying where it came from."""
    header = [
        f"# The best trial of sweep {sweep_id}: trial {row.trial_id}, {metric} = {row.metric}",
        "# Its parameters: " + ", ".join(f"{k} = {v!r}" for k, v in row.params.items()),
        "# Train it as a job: orchestrator submit THIS_FILE",
    ]
    return "\n".join(header) + "\n" + dump_yaml(dict(spec))
