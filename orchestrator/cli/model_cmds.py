"""``orchestrator predict``: a finished job's saved model on new samples."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli import OUTPUT_OPTION, emit_json, handle_errors, main, settings_of
from orchestrator.errors import UsageError

SHOWN = 20


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--input", "input_path", required=True, metavar="FILE.npz",
              help="Samples to predict: an .npz file with an array x shaped like the training data's x.")
@OUTPUT_OPTION
@click.pass_context
@handle_errors
def predict(ctx: click.Context, job_id: str, input_path: str, output: str) -> None:
    """Load JOB's saved model (TorchScript or SavedModel, preprocessing included) and predict INPUT's samples."""
    import json

    from orchestrator.backends.local import LocalBackend
    from orchestrator.models.predict import predict as run_predict
    from orchestrator.models.predict import read_inputs

    record = LocalBackend(settings_of(ctx)).status(job_id)
    generator = record.result.get("generator_path")
    if generator:
        how = f"tf.saved_model.load({generator!r}).generate(z)" if not generator.endswith(".pt") \
            else f"torch.jit.load({generator!r})(z)"
        raise UsageError(f"job {record.id} trained a gan: it generates samples rather than predicting",
                         fix=f"load its generator and give it latent vectors z (normal noise shaped (n, latent)): {how}")
    model_dir = Path(record.result.get("model_dir") or Path(record.result.get("torchscript_path") or ".").parent)
    if not (model_dir / "model.json").is_file():
        raise UsageError(f"job {record.id} has no saved model ({record.state.value})",
                         fix="predict with a job that succeeded, or `orchestrator resume` this one first")
    meta = json.loads((model_dir / "model.json").read_text())
    path = str(model_dir / next(iter(meta["files"].values())))
    x = read_inputs(input_path, tuple(meta["sample_shape"]))
    result = {"job_id": record.id, "model": path, "samples": len(x), **run_predict(model_dir, x)}
    if output == "json":
        emit_json(result)
        return
    for i, pred in enumerate(result["predictions"][:SHOWN]):
        extra = f"  p={result['probability'][i]:.3f}" if result["task"] == "classification" else ""
        click.echo(f"{i:>5}  {pred}{extra}")
    if len(x) > SHOWN:
        click.echo(f"... {len(x) - SHOWN} more (--output json lists all)")
