"""Load a sweep spec (a job spec plus ``tune:``) from YAML, with file:line and field paths in errors.

The job part goes through the job spec's own loader functions (the same messages as
``orchestrator submit``); the ``tune:`` section is validated here, and so is every search-space
key against the job spec: the path must name a field, and the values the sampler can draw must be
valid for that field (``training.batch_size: uniform(8, 64)`` fails: the field takes whole numbers).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.errors import NotAvailableError, SpecError, SpecIssue
from orchestrator.spec.loader import (
    LoadedYAML,
    apply_overrides,
    parse_yaml_text,
    read_spec_text,
    resolve_paths,
    validate_spec_data,
)
from orchestrator.spec.models import CrossFieldError, JobSpec
from orchestrator.sweep.models import SweepSpec, TuneSpec

EXAMPLE_FILE = "jobs/cnn-sweep.yaml"


def load_sweep_spec(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> SweepSpec:
    """Read and validate a sweep spec file; ``overrides`` (``a.b=value``) apply to the job part."""
    source = str(path)
    loaded = parse_yaml_text(read_spec_text(Path(path)), source)
    data = loaded.data
    if not isinstance(data, Mapping):
        raise SpecError([SpecIssue("", "the top level must be a mapping of fields",
                                   fix=f"start from {EXAMPLE_FILE}", line=1)], source=source)
    job_data = {k: v for k, v in data.items() if k != "tune"}
    if "tune" not in data:
        raise SpecError([SpecIssue("tune", "a sweep spec needs a `tune:` section",
                                   fix=f"add `tune:` with a search_space (see {EXAMPLE_FILE}); to train "
                                   "one job, use `orchestrator submit`", line=None)], source=source)
    overrides = list(overrides)
    if overrides:
        job_data = apply_overrides(job_data, overrides)
    job = validate_spec_data(job_data, source=source, loaded=loaded)
    job = resolve_paths(job, Path(path).resolve().parent, source=source, loaded=loaded)
    tune = validate_tune_data(data["tune"], source=source, loaded=loaded)
    issues = search_space_issues(job, tune, loaded) + metric_issues(job, tune, loaded)
    if job.init_from:  # trials do not resolve another job's weights (yet): refuse rather than ignore
        issues.append(SpecIssue("init_from", "a sweep's trials cannot start from another job's weights yet",
                                fix="remove init_from from the sweep spec (`orchestrator submit` runs a job with it)",
                                line=_line(loaded, ("init_from",))))
    if issues:
        raise SpecError(issues, source=source)
    check_search_available(tune)
    return SweepSpec(job=job, tune=tune)


def _dotted(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _line(loaded: LoadedYAML | None, loc: tuple[str | int, ...]) -> int | None:
    return loaded.line_of(loc) if loaded else None


def validate_tune_data(data: Any, *, source: str | None = None, loaded: LoadedYAML | None = None) -> TuneSpec:
    """Validate the ``tune:`` mapping; every error names its ``tune.…`` field path and line."""
    if not isinstance(data, Mapping):
        raise SpecError([SpecIssue("tune", "must be a mapping", fix=f"see {EXAMPLE_FILE}",
                                   line=_line(loaded, ("tune",)))], source=source)
    try:
        return TuneSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_tune_issues(exc, data, loaded), source=source) from None


def _tune_issues(exc: ValidationError, data: Mapping[str, Any], loaded: LoadedYAML | None) -> list[SpecIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc: tuple[str | int, ...] = ("tune",) + tuple(
            p for p in err["loc"] if not (isinstance(p, str) and p in ("asha", "pbt", "fifo"))
        )
        message = err["msg"].removeprefix("Value error, ")
        fix = None
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, CrossFieldError):
            field = original.field_path
            if field.startswith("search_space."):  # keep a dotted job path as one key (for its line)
                loc = loc + ("search_space", field.removeprefix("search_space."))
            else:
                loc = loc + tuple(field.split("."))
            message, fix = str(original), original.fix
        elif err["type"] == "extra_forbidden":
            allowed = sorted(_model_at(loc).model_fields)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            message = "unknown field"
            fix = (f"did you mean `{close[0]}`? " if close else "") + "Allowed here: " + ", ".join(allowed)
        elif err["type"] == "literal_error":
            fix = f"use {(err.get('ctx') or {}).get('expected')}"
        elif err["type"] == "union_tag_invalid":
            fix = "use scheduler type asha, pbt or fifo"
            message = "unknown scheduler type"
        elif err["type"] == "missing":
            message, fix = "required field is missing", f"add `{_dotted(loc)}:` (see {EXAMPLE_FILE})"
        elif err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            fix = f"set {_dotted(loc)} within the bound ({message})"
        if fix is None and err["type"].startswith(("int_", "float_", "bool", "string_", "finite")):
            fix = f"set {_dotted(loc)} to a value of its type (see {EXAMPLE_FILE})"
        issues.append(SpecIssue(_dotted(loc), message, fix=fix or f"see {EXAMPLE_FILE}", line=_line(loaded, loc)))
    return issues


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel]:
    from orchestrator.sweep.models import AshaScheduler

    return AshaScheduler if "scheduler" in loc else TuneSpec


# -- search-space keys against the job spec ------------------------------------------------------
def field_path_problem(job: JobSpec, path: str) -> tuple[str, str] | None:
    """(message, fix) when ``path`` names no settable field of ``job``'s spec; None when it does."""
    parts = path.split(".")
    model: type[BaseModel] = JobSpec
    instance: Any = job
    for i, part in enumerate(parts):
        fields = model.model_fields
        info = fields.get(part)
        where = ".".join(parts[:i]) or "the job spec"
        if info is None:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            hint = f"did you mean `{'.'.join(parts[:i] + [close[0]])}`? " if close else ""
            return (f"{where} has no field {part!r}", hint + "Fields there: " + ", ".join(sorted(fields)))
        value = getattr(instance, part, None) if instance is not None else None
        if isinstance(value, BaseModel):
            model, instance = type(value), value
            if i == len(parts) - 1:
                return (f"{path} is a whole section, not one value",
                        f"name one of its fields, e.g. {path}.{sorted(model.model_fields)[0]}")
            continue
        if isinstance(value, dict) and part == "params":
            return None if i < len(parts) - 1 else (
                "params is a mapping", "name one entry, e.g. params.hidden")
        if i < len(parts) - 1:
            return (f"{'.'.join(parts[: i + 1])} is a single value; it has no field {parts[i + 1]!r}",
                    f"search over {'.'.join(parts[: i + 1])} itself")
    return None


def with_value(job_json: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of spec data with ``path`` (dotted) set to ``value``."""
    out = dict(job_json)
    parts = path.split(".")
    target = out
    for part in parts[:-1]:
        target[part] = dict(target.get(part) or {})
        target = target[part]
    target[parts[-1]] = value
    return out


def apply_params(job: JobSpec, params: Mapping[str, Any]) -> JobSpec:
    """The trial's job spec: the base job with each ``path: value`` of ``params`` set."""
    data = job.model_dump(mode="json")
    for path, value in params.items():
        data = with_value(data, path, _plain(value))
    return JobSpec.model_validate(data)


def _plain(value: Any) -> Any:
    """A sampler's value as a plain Python value (a NumPy scalar would fail the strict spec fields)."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def search_space_issues(job: JobSpec, tune: TuneSpec, loaded: LoadedYAML | None = None) -> list[SpecIssue]:
    """Every search-space key that names no field, or whose values the field refuses."""
    issues = []
    base = job.model_dump(mode="json")
    for path, dim in tune.dimensions.items():
        loc = ("tune", "search_space", path)
        problem = field_path_problem(job, path)
        if problem is not None:
            issues.append(SpecIssue(_dotted(loc), problem[0], fix=problem[1], line=_line(loaded, loc)))
            continue
        for value in dim.samples_for_validation():
            try:
                JobSpec.model_validate(with_value(base, path, value))
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                original = (first.get("ctx") or {}).get("error")
                reason = str(original) if isinstance(original, CrossFieldError) else first["msg"]
                fix = (f"draw values {path} accepts: whole numbers need randint(low, high) or choice([...])"
                       if first["type"].startswith("int_") else
                       f"keep the range of {dim.kind}() inside what {path} accepts")
                issues.append(SpecIssue(_dotted(loc), f"{dim.text} can draw {value!r}, which {path} refuses: "
                                        f"{reason.removeprefix('Value error, ')}", fix=fix,
                                        line=_line(loaded, loc)))
                break
    return issues


def metric_issues(job: JobSpec, tune: TuneSpec, loaded: LoadedYAML | None = None) -> list[SpecIssue]:
    """An accuracy metric for a job that reports none (a gan, a regression on the generated sine):
    ASHA would never stop a trial and the sweep would fail only at its end."""
    if not tune.metric.endswith("accuracy"):
        return []
    model_type = job.model.type if job.model is not None else None
    why = ("a gan reports generator_loss and discriminator_loss, no accuracy" if model_type == "gan" else
           "data.source: sine is a regression task: it reports mean squared errors, no accuracy"
           if job.data.source == "sine" else None)
    if why is None:
        return []
    loc = ("tune", "metric")
    fix = "use metric: generator_loss with mode: min" if model_type == "gan" else "use metric: val_loss with mode: min"
    return [SpecIssue(_dotted(loc), f"{tune.metric!r} is never reported: {why}", fix=fix, line=_line(loaded, loc))]


def check_search_available(tune: TuneSpec) -> None:
    """``search: optuna`` needs the optuna package (exit 2 with the install command otherwise)."""
    if tune.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise NotAvailableError("tune.search: optuna needs the optuna package, which is not installed",
                                fix="pip install optuna, or use search: random")
