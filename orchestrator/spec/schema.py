"""JSON Schema export of the job spec (the CRD schema is generated from this, never hand-copied)."""

from __future__ import annotations

from typing import Any

from orchestrator.spec.models import JobSpec


def job_spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a job spec, as pydantic generates it."""
    schema = JobSpec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "JobSpec")
    return schema
