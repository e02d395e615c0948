"""Terminal output: live progress while a job runs, tables for job records."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.events import AttemptStart, CheckpointSkipped, Epoch, Event, Log, Queued, Step
from orchestrator.metrics import names
from orchestrator.store import JobRecord, JobState

STATE_STYLE = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "yellow",
    JobState.INTERRUPTED: "yellow",
    JobState.RUNNING: "cyan",
    JobState.PENDING: "blue",
    JobState.CANCELLING: "yellow",
}


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


class LiveProgress:
    """Progress bar per epoch with loss, then one line per finished epoch (on stderr)."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None
        self.task_epoch: int | None = None
        self.epochs = 0

    # EventHandler protocol
    def on_start(self, record: JobRecord, info: dict[str, Any]) -> None:
        self.epochs = int(record.spec["training"]["epochs"])
        if self.quiet:
            return
        data = info.get("data", {})
        c = self.console
        c.print(f"[bold]job {record.id}[/] ({record.spec['framework']}, {info['workers']} workers, "
                f"backend {record.backend})")
        if data:
            c.print(f"  data: {data.get('source')}: {data.get('train')} train / {data.get('validation')} "
                    f"validation / {data.get('test')} test samples, shape {tuple(data.get('sample_shape', ()))}")
        if info.get("dashboard_url"):
            c.print(f"  Ray dashboard: {info['dashboard_url']}")
        if info.get("tensorboard_dir"):
            c.print(f"  TensorBoard:   tensorboard --logdir {info['tensorboard_dir']}")
        if info.get("metrics_url"):
            c.print(f"  Prometheus:    {info['metrics_url']}")
        where = "" if record.backend == "local" else f" --backend {record.backend}"
        c.print(f"  logs:          orchestrator logs {record.id}{where} --follow")
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()

    def on_event(self, event: Event) -> None:
        if self.quiet or self.progress is None:
            return
        match event:
            case Step():
                epoch = int(event.epoch)
                if self.task_epoch != epoch:
                    if self.task is not None:
                        self.progress.remove_task(self.task)
                    self.task = self.progress.add_task("", total=event.steps, epoch=epoch,
                                                       epochs=self.epochs, loss="-")
                    self.task_epoch = epoch
                self.progress.update(self.task, completed=event.step, loss=fmt(event.loss))
            case Epoch():
                m = event.metrics
                self.progress.console.print(
                    f"epoch {event.epoch:>3}/{self.epochs}  "
                    f"loss {fmt(m.get(names.TRAIN_LOSS))} acc {fmt(m.get(names.TRAIN_ACCURACY))} | "
                    f"val loss {fmt(m.get(names.VAL_LOSS))} acc {fmt(m.get(names.VAL_ACCURACY))} | "
                    f"{fmt(m.get(names.SAMPLES_PER_SECOND))} samples/s | {fmt(m.get(names.EPOCH_SECONDS), 2)}s"
                )
            case Queued():
                self.progress.console.print(f"[yellow]queued: {event.reason}[/]")
            case AttemptStart() if event.restored_epoch is not None:
                self.progress.console.print(
                    f"[cyan]restored checkpoint of epoch {event.restored_epoch} "
                    f"(step {event.restored_step})[/]"
                )
            case CheckpointSkipped():
                self.progress.console.print(f"[yellow]skipped checkpoint {event.path}: {event.reason}[/]")
            case Log():
                for line in event.lines:
                    self.progress.console.print(f"[dim]\\[rank {event.rank}][/] {line}", markup=True,
                                                highlight=False)

    def on_finish(self, record: JobRecord) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary_table(record: JobRecord) -> Table:
    """The end-of-job summary: state, metrics and where things are."""
    style = STATE_STYLE.get(record.state, "")
    table = Table(title=f"job {record.id}: [{style}]{record.state.value}[/]", show_header=False,
                  title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    if record.message:
        table.add_row("message", record.message)
    metrics = record.result.get("metrics", {})
    for key in (names.VAL_ACCURACY, names.VAL_LOSS, names.TEST_ACCURACY, names.TEST_LOSS,
                names.TRAIN_LOSS, names.SAMPLES_PER_SECOND, "epochs"):
        if key in metrics:
            table.add_row(key, fmt(metrics[key]))
    if record.started_at and record.ended_at:
        table.add_row("wall time", f"{record.ended_at - record.started_at:.1f}s")
    for key in ("checkpoint", "model_path", "torchscript_path", "tensorboard_dir"):
        if record.result.get(key):
            table.add_row(key, str(record.result[key]))
    if len(record.attempts) > 1:
        table.add_row("attempts", str(len(record.attempts)))
    return table


def jobs_table(records: list[JobRecord]) -> Table:
    table = Table()
    for col in ("job", "state", "backend", "epoch", "val_accuracy", "created", "message"):
        table.add_column(col)
    for r in records:
        progress = r.job_progress
        epoch = f"{progress.epoch or '-'}/{progress.epochs or r.spec['training']['epochs']}"
        val = r.result.get("metrics", {}).get(names.VAL_ACCURACY, progress.metrics.get(names.VAL_ACCURACY))
        table.add_row(
            r.id,
            f"[{STATE_STYLE.get(r.state, '')}]{r.state.value}[/]",
            r.backend,
            epoch,
            fmt(val),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at)),
            (r.message or "")[:60],
        )
    return table


def stdout_console() -> Console:
    """stdout console; when piped, wide enough that paths in tables are not cut."""
    return Console(file=sys.stdout, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
