"""`orchestrator data inspect` and `orchestrator data generate`: data sets of files."""

from __future__ import annotations

from typing import Any

import click

from orchestrator.cli.common import OUTPUT_OPTION, emit_json, handle_errors
from orchestrator.errors import SpecError, SpecIssue, UsageError


@click.group()
def data() -> None:
    """Look at and write data sets of files (Parquet, CSV, .npz/.npy shards, image folders)."""


def _data_spec(source: str, fmt: str, label_column: str, feature_columns: str | None, image_size: str | None,
               image_mode: str) -> Any:
    from pydantic import ValidationError

    from orchestrator.spec.datasource import resolve_source
    from orchestrator.spec.models import DataSpec

    args: dict[str, Any] = {"source": resolve_source(source, "."), "format": fmt, "label_column": label_column,
                            "image_mode": image_mode}
    if feature_columns:
        args["feature_columns"] = [c.strip() for c in feature_columns.split(",") if c.strip()]
    if image_size:
        try:
            args["image_size"] = [int(v) for v in image_size.lower().split("x")]
        except ValueError:
            raise UsageError(f"--image-size {image_size!r} is not HEIGHTxWIDTH", fix="e.g. --image-size 28x28") from None
    try:
        spec = DataSpec(**args)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{'.'.join(str(p) for p in first['loc']) or 'source'}: {first['msg']}",
                         fix="see orchestrator data inspect --help") from None
    if not spec.is_file_set:
        raise UsageError(f"{source} is not a data set of files",
                         fix="give a directory, a glob (data/*.parquet) or an s3:// or gs:// prefix")
    return spec


@data.command()
@click.argument("source", metavar="SOURCE")
@click.option("--workers", "-w", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="Show the files and rows each of N workers would read (epoch 1).")
@click.option("--format", "fmt", type=click.Choice(["auto", "parquet", "npz", "npy", "csv", "images"]),
              default="auto", show_default=True, help="The files' format (auto: from their extensions).")
@click.option("--label-column", default="label", show_default=True, help="Parquet/CSV: the label column.")
@click.option("--feature-columns", default=None, metavar="A,B,...", help="Parquet/CSV: the feature columns.")
@click.option("--image-size", default=None, metavar="HxW", help="Image folders: resize to HEIGHTxWIDTH.")
@click.option("--image-mode", type=click.Choice(["grayscale", "rgb"]), default="rgb", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="The split's seed (training.seed).")
@OUTPUT_OPTION
@handle_errors
def inspect(source: str, workers: int, fmt: str, label_column: str, feature_columns: str | None,
            image_size: str | None, image_mode: str, seed: int, output: str) -> None:
    """Rows, columns/shape, label counts, size and files of a data set, and each worker's part.

    SOURCE is a directory, a glob or an s3:// / gs:// prefix. Reads every file once (Ray Data, on an
    embedded Ray); a bad file is reported with its path (exit 2).
    """
    spec = _data_spec(source, fmt, label_column, feature_columns, image_size, image_mode)
    import ray

    from orchestrator.runtime.datasets import inspect as inspect_data
    from orchestrator.runtime.datasets import precheck

    precheck(spec)  # missing files, mixed formats, missing columns: before Ray starts

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        report = inspect_data(spec, workers, seed)
    finally:
        if started:
            ray.shutdown()
    if output == "json":
        emit_json(report)
        return
    click.echo(f"{report['source']}: {report['format']}, {report['files']} files, {report['bytes']:,} bytes")
    split = report["split"]["rows"]
    click.echo(f"rows: {report['rows']:,} (train {split['train']:,}, validation {split['validation']:,}, "
               f"test {split['test']:,}; seed {seed})")
    if report["columns"]:
        click.echo(f"columns: {', '.join(report['columns'])}")
    click.echo(f"sample shape: {tuple(report['sample_shape'])}; task: {report['task']}"
               + (f", {report['num_classes']} classes" if report["num_classes"] else ""))
    if report["label_counts"]:
        click.echo("labels: " + ", ".join(f"{k}: {v}" for k, v in report["label_counts"].items()))
    for w in report["per_worker"]:
        names = w["train_files"]
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} files)" if len(names) > 4 else "")
        click.echo(f"worker {w['rank']}: {w['train_rows']:,} training rows from {shown or 'no files'}")
    if report["problem"]:
        raise SpecError([SpecIssue("workers", report["problem"],
                                   fix="use fewer workers, or write the data as more shards")])


@data.command()
@click.argument("kind", type=click.Choice(["parquet", "csv", "npz", "npy", "images"]))
@click.argument("directory", metavar="DIR")
@click.option("--shards", type=click.IntRange(1, 100_000), default=4, show_default=True,
              help="Files to deal the rows into (not for images: one file each).")
@click.option("--copies", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Copies of the digits (each after the first with seeded noise): the data set's size.")
@click.option("--seed", type=int, default=0, show_default=True)
@OUTPUT_OPTION
@handle_errors
def generate(kind: str, directory: str, shards: int, copies: int, seed: int, output: str) -> None:
    """Write scikit-learn's 8x8 digits into DIR as KIND files (nothing is downloaded).

    \b
    parquet, csv: columns p0..p63 and label; npz: arrays x, y; npy: a structured array (x, y);
    images: DIR/<class>/digit-N.png (grayscale PNGs).
    """
    from orchestrator.runtime.datagen import generate as write

    result = write(kind, directory, shards=shards, copies=copies, seed=seed)
    if output == "json":
        emit_json(result)
        return
    click.echo(f"wrote {result['rows']:,} rows as {result['files']} {kind} files ({result['bytes']:,} bytes) "
               f"into {result['directory']}")


COMMANDS: tuple[click.Command, ...] = (data,)
