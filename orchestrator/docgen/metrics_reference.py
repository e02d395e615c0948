"""docs/metrics.md: every TensorBoard tag and Prometheus metric, generated from orchestrator/metrics/names.py."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.metrics import names
from orchestrator.metrics.names import PromMetric

_INTRO = """\
Every metric name, generated from `orchestrator/metrics/names.py` (where each is defined once) by
`python -m orchestrator.docgen`; a test fails when this file is out of date.
"""

_TENSORBOARD = f"""\
## TensorBoard

One point per epoch, the same tags in torch and tensorflow jobs (`tensorboard --logdir <job>/tensorboard`,
or `orchestrator tensorboard JOB`). A regression job has no accuracy tags (its losses are mean
squared errors); the generator and discriminator losses are a `gan` job's. A `gan` job also writes
an image `{names.SAMPLES_IMAGE_TAG}` per epoch (the same latent vectors each epoch, also written as
PNGs to the job's `samples/` folder).
"""

_PROMETHEUS = """\
## Prometheus

A running job serves `/metrics` (the URL is printed at the start and stored as `metrics_url`;
`--metrics-port`, `--metrics-host`, `--metrics-linger`). `orchestrator metrics serve` exports the
job-level metrics for every job in the job store, and the queue and pool metrics of this machine's
queue, for long-running scraping. `dashboards/` has Grafana dashboards (cluster overview, job
detail) and Prometheus alert and recording rules that use these names (its README says how to load
them; `orchestrator examples` copies them out of an installed package).
"""

_GROUPS: tuple[tuple[str, Callable[[PromMetric], bool]], ...] = (
    ("Per job (labels `job`, `framework`)", lambda m: m.labels[:2] == names.JOB_LABELS),
    ("Queues, pools and the scheduler", lambda m: m.labels[:2] != names.JOB_LABELS
     and not m.name.startswith(names.PROMETHEUS_PREFIX + "operator_")),
    ("The Kubernetes operator (`orchestrator operator`; pool capacity uses the pool metrics above)",
     lambda m: m.name.startswith(names.PROMETHEUS_PREFIX + "operator_")),
)


def _prometheus_rows(metrics: list[PromMetric]) -> list[str]:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in metrics:
        labels = ", ".join(f"`{label}`" for label in metric.labels)
        rows.append(f"| `{metric.name}` | {metric.kind} | {labels} | {metric.help} |")
    return rows


def render() -> str:
    """The whole page."""
    lines = ["# Metrics", "", _INTRO, "", _TENSORBOARD, "", "| epoch report key | TensorBoard tag | when |", "|---|---|---|"]
    lines += [f"| `{key}` | `{tag}` | every epoch |" for key, tag in names.TENSORBOARD_TAGS.items()]
    lines += [f"| `{key}` | `{tag}` | once, at the end |" for key, tag in names.FINAL_TENSORBOARD_TAGS.items()]
    lines += ["", "The epoch report keys are also the keys of `metrics` in `--output json`.", "", _PROMETHEUS, ""]
    for title, belongs in _GROUPS:
        members = [metric for metric in names.ALL_PROMETHEUS_METRICS if belongs(metric)]
        lines += [f"### {title}", "", *_prometheus_rows(members), ""]
    return "\n".join(line.rstrip() for line in lines).rstrip() + "\n"
