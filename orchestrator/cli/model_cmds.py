"""``orchestrator predict`` (a finished job's saved model on new samples) and ``orchestrator compare``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.common import OUTPUT_OPTION, emit_json, handle_errors, settings_of
from orchestrator.errors import UsageError

if TYPE_CHECKING:
    from orchestrator.spec.models import JobSpec

SHOWN = 20


@click.command()
@click.argument("job_id", metavar="JOB|LOCATION")
@click.option("--input", "input_path", required=True, metavar="FILE.npz",
              help="Samples to predict: an .npz file with an array x shaped like the training data's x.")
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def predict(ctx: click.Context, job_id: str, input_path: str, output: str) -> None:
    """Load JOB's saved model (TorchScript or SavedModel, preprocessing included) and predict INPUT's samples.

    JOB may be a job's storage location (s3://bucket/prefix/JOB_ID, or a shared path): no job
    record is needed, and the model is copied into this machine's cache first.
    """
    import json

    from orchestrator.backends.local import LocalBackend
    from orchestrator.execution.outputs import JobOutputs
    from orchestrator.models.predict import predict as run_predict
    from orchestrator.models.predict import read_inputs
    from orchestrator.storage import is_job_location

    if is_job_location(job_id):
        outputs = JobOutputs.at(job_id)
        result_keys = outputs.snapshot().get("result") or {}
        job_name, state = outputs.job_id, str(outputs.snapshot().get("state") or "unknown")
    else:
        record = LocalBackend(settings_of(ctx)).status(job_id)
        outputs = JobOutputs.of_record(record)
        result_keys, job_name, state = record.result, record.id, record.state.value
    generator = result_keys.get("generator_path")
    if generator:
        how = f"tf.saved_model.load({generator!r}).generate(z)" if not generator.endswith(".pt") \
            else f"torch.jit.load({generator!r})(z)"
        raise UsageError(f"job {job_name} trained a gan: it generates samples rather than predicting",
                         fix=f"load its generator and give it latent vectors z (normal noise shaped (n, latent)): {how}")
    model_dir = outputs.model_dir()
    if not (model_dir / "model.json").is_file():
        raise UsageError(f"job {job_name} has no saved model ({state})",
                         fix="predict with a job that succeeded, or `orchestrator resume` this one first")
    meta = json.loads((model_dir / "model.json").read_text())
    path = str(model_dir / next(iter(meta["files"].values())))
    x = read_inputs(input_path, tuple(meta["sample_shape"]))
    result = {"job_id": job_name, "model": path, "samples": len(x), **run_predict(model_dir, x)}
    if output == "json":
        emit_json(result)
        return
    for i, pred in enumerate(result["predictions"][:SHOWN]):
        extra = f"  p={result['probability'][i]:.3f}" if result["task"] == "classification" else ""
        click.echo(f"{i:>5}  {pred}{extra}")
    if len(x) > SHOWN:
        click.echo(f"... {len(x) - SHOWN} more (--output json lists all)")


COMPARED = (
    # (label, where the value is, format)
    ("state", "state", "{}"),
    ("val_accuracy", "metrics.val_accuracy", "{:.4f}"),
    ("test_accuracy", "metrics.test_accuracy", "{:.4f}"),
    ("val_loss", "metrics.val_loss", "{:.4g}"),
    ("confident_samples", "metrics.confident_samples", "{:.3f}"),
    ("samples/s", "metrics.samples_per_second", "{:,.0f}"),
    ("peak worker memory", "peak_worker_rss_bytes", "mib"),
    ("time to first step", "time_to_first_step_s", "{:.1f}s"),
    ("wall time", "wall_s", "{:.1f}s"),
)


def _compare_row(record: Any) -> dict[str, Any]:
    result = record.result
    return {
        "framework": record.spec["framework"], "job_id": record.id, "state": record.state.value,
        "message": record.message, "metrics": result.get("metrics", {}),
        "peak_worker_rss_bytes": result.get("peak_worker_rss_bytes"),
        "time_to_first_step_s": result.get("time_to_first_step_s"),
        "wall_s": (record.ended_at - record.started_at) if record.ended_at and record.started_at else None,
        "sync_backend": result.get("sync_backend"),
    }


def _cell(row: dict[str, Any], where: str, fmt: str) -> str:
    value: Any = row
    for part in where.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return "-"
    if fmt == "mib":
        return f"{value / 2**20:,.0f} MiB"
    return fmt.format(value)


@click.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--frameworks", default="torch,tensorflow", show_default=True, metavar="A,B",
              help="Frameworks to run SPEC in, one after the other.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a spec field in every run, e.g. --set training.epochs=3 (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="No live progress.")
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def compare(ctx: click.Context, spec_path: str, frameworks: str, overrides: tuple[str, ...], quiet: bool,
            output: str) -> None:
    """Run SPEC in each framework on this machine and print a side-by-side table.

    The same model, data, shards, seed and resources in each run: validation and test accuracy,
    samples per second, the workers' peak memory, time to the first step and wall time. Each run
    is an ordinary job (`orchestrator status JOB` shows it later).
    """
    import sys

    from rich.table import Table

    from orchestrator.backends.base import SubmitOptions
    from orchestrator.backends.local import LocalBackend
    from orchestrator.cli.ui import LiveProgress, stdout_console
    from orchestrator.execution.driver import check_framework_available
    from orchestrator.spec import load_spec

    chosen = [f.strip() for f in frameworks.split(",") if f.strip()]
    bad = [f for f in chosen if f not in ("torch", "tensorflow")]
    if bad or not chosen:
        raise UsageError(f"--frameworks {frameworks!r}: unknown framework {', '.join(bad) or '(none)'}",
                         fix="give torch, tensorflow or both: --frameworks torch,tensorflow")
    specs = [load_spec(spec_path, [*overrides, f"framework={f}"]) for f in chosen]  # every spec valid first
    # One checkpoint directory belongs to one job: each run checkpoints into a folder of its own
    # under the spec's checkpoint.dir, and every one is checked before the first run starts.
    specs = [_own_checkpoint_dir(spec) for spec in specs]
    backend = LocalBackend(settings_of(ctx))
    for spec in specs:
        check_framework_available(spec)
        backend.refuse_owned_checkpoint_dir(spec)
    rows = []
    for spec in specs:
        ui = None if output == "json" and quiet else LiveProgress(quiet=quiet)
        try:
            record = backend.submit(spec, SubmitOptions(spec_path=spec_path, metrics_port=None), ui)
        finally:
            if ui is not None:
                ui.stop()
        rows.append(_compare_row(record))
    if output == "json":
        emit_json({"spec": spec_path, "runs": rows})
    else:
        table = Table(title=f"{specs[0].name}: {' vs '.join(chosen)}")
        table.add_column("")
        for row in rows:
            table.add_column(row["framework"], justify="right")
        for label, where, fmt in COMPARED:
            cells = [_cell(row, where, fmt) for row in rows]
            if any(c != "-" for c in cells):
                table.add_row(label, *cells)
        table.add_row("job", *[row["job_id"] for row in rows])
        stdout_console().print(table)
    if any(row["state"] != "succeeded" for row in rows):
        sys.exit(1)


def _own_checkpoint_dir(spec: JobSpec) -> JobSpec:
    """``spec`` with ``checkpoint.dir`` set to ``<checkpoint.dir>/<framework>`` when it names one."""
    if not spec.checkpoint.dir:
        return spec
    own = str(Path(spec.checkpoint.dir) / spec.framework)
    return spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update={"dir": own})})


#: The verbs of this module (added to the command line by :mod:`orchestrator.cli`).
COMMANDS: tuple[click.Command, ...] = (predict, compare)
