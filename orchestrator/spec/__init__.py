"""Job spec: models, loading and schema export. Imports nothing heavy (no torch, no Ray)."""

from orchestrator.spec.loader import (
    apply_overrides,
    dump_yaml,
    load_spec,
    parse_yaml_text,
    validate_spec_data,
    with_default_storage,
)
from orchestrator.spec.models import JobSpec
from orchestrator.spec.schema import job_spec_json_schema

__all__ = [
    "JobSpec",
    "apply_overrides",
    "dump_yaml",
    "job_spec_json_schema",
    "load_spec",
    "parse_yaml_text",
    "validate_spec_data",
    "with_default_storage",
]
