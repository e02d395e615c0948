"""Terminal output of a sweep: a live table of trials while it runs, the leaderboard at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.cli.ui import STATE_STYLE, fmt
from orchestrator.store import JobRecord
from orchestrator.sweep.report import TrialRow

TRIAL_STYLE = {"succeeded": "green", "stopped": "yellow", "interrupted": "yellow", "failed": "red", "running": "cyan"}


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in params.items())


def trials_table(rows: list[TrialRow], metric: str, epochs: int, title: str | None = None) -> Table:
    """One line per trial: state, parameters, epochs trained, the metric."""
    table = Table(title=title, title_justify="left")
    for col in ("trial", "state", "parameters", "epoch", metric, f"best {metric}", "test_accuracy"):
        table.add_column(col)
    for r in rows:
        state = "stopped early" if r.stopped_early else r.state
        table.add_row(r.trial_id, f"[{TRIAL_STYLE.get(r.state, '')}]{state}[/]", _params(r.params),
                      f"{r.epochs_trained}/{epochs}", fmt(r.metric), fmt(r.best_metric),
                      fmt(r.final.get("test_accuracy")))
    return table


def sweep_summary(record: JobRecord) -> Group:
    """The end-of-sweep view: leaderboard, best trial, budget saved, where things are."""
    result, spec = record.result, record.spec
    metric, epochs = spec["tune"]["metric"], spec["training"]["epochs"]
    rows = [TrialRow(**{k: v for k, v in r.items() if k != "stopped_early"}) for r in result.get("leaderboard", [])]
    if not rows:  # still running or never finished: the live rows
        rows = [TrialRow(**{k: v for k, v in r.items() if k != "stopped_early"})
                for r in (record.progress or {}).get("trials", [])]
    style = STATE_STYLE.get(record.state, "")
    parts: list[Any] = [trials_table(rows, metric, epochs,
                                     title=f"sweep {record.id}: [{style}]{record.state.value}[/] -- leaderboard")]
    info = Table(show_header=False, box=None)
    info.add_column("field", style="bold")
    info.add_column("value")
    if record.message:
        info.add_row("message", record.message)
    best = result.get("best")
    if best:
        info.add_row("best trial", f"{best['trial_id']} ({_params(best['params'])}): {metric} {fmt(best['metric'])}")
        for key, label in (("spec_path", "best spec"), ("checkpoint", "best checkpoint"), ("model_dir", "best model")):
            if best.get(key):
                info.add_row(label, str(best[key]))
    b = result.get("budget")
    if b:
        untrained = b.get("trial_epochs_not_trained") or 0
        info.add_row("budget", f"{b['trial_epochs_used']} of {b['trial_epochs_full']} trial-epochs trained "
                               f"({b['saved_fraction']:.0%} saved by early stopping: "
                               f"{b['trials_stopped_early']} trials stopped early"
                               + (f"; {untrained} not trained: trials interrupted, failed or not started)"
                                  if untrained else ")"))
    if record.started_at and record.ended_at:
        info.add_row("wall time", f"{record.ended_at - record.started_at:.1f}s")
    for key in ("tensorboard_dir", "dashboard_url"):
        if result.get(key):
            info.add_row(key, str(result[key]))
    parts.append(info)
    return Group(*parts)


class LiveSweep:
    """Implements SweepEvents: a live trial table on stderr (nothing when quiet)."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.live: Live | None = None
        self.metric = "val_accuracy"
        self.epochs = 0

    def on_start(self, record: JobRecord, info: dict[str, Any]) -> None:
        self.metric = record.spec["tune"]["metric"]
        self.epochs = int(record.spec["training"]["epochs"])
        if self.quiet:
            return
        c = self.console
        verb = "resumed" if info.get("resumed") else "started"
        c.print(f"[bold]sweep {record.id}[/] {verb}: {info['trials']} trials, {info['max_concurrent']} at a time "
                f"({record.spec['framework']}, {record.spec['resources']['workers']} workers per trial)")
        if info.get("dashboard_url"):
            c.print(f"  Ray dashboard: {info['dashboard_url']}")
        c.print(f"  TensorBoard:   tensorboard --logdir {info['tensorboard_dir']}  (hparams at the end)")
        c.print(f"  status:        orchestrator status {record.id}")
        self.live = Live(Text("waiting for the first trial..."), console=c, refresh_per_second=2, transient=False)
        self.live.start()

    def on_trials(self, rows: list[TrialRow], total: int) -> None:
        if self.live is None:
            return
        done = sum(1 for r in rows if r.state in ("succeeded", "stopped", "failed"))  # interrupted: resumable
        self.live.update(trials_table(rows, self.metric, self.epochs,
                                      title=f"trials: {done} of {total} done, {len(rows) - done} running"))

    def on_finish(self, record: JobRecord) -> None:
        self.stop()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
