"""Write prometheusrule.yaml: dashboards/prometheus/rules.yml as a Prometheus Operator
PrometheusRule (the same groups, verbatim). Run from the repository root after editing rules.yml:

    python deploy/k8s/monitoring/generate_prometheusrule.py

tests/k8s/test_deploy.py fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[2] / "dashboards" / "prometheus" / "rules.yml"
OUTPUT = HERE / "prometheusrule.yaml"
HEADER = ("# Generated from dashboards/prometheus/rules.yml by generate_prometheusrule.py beside this file.\n"
          "# Do not edit: a test fails when the two differ.\n")


def prometheus_rule(rules_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "orchestrator", "namespace": "orchestrator-system",
                     "labels": {"app.kubernetes.io/name": "orchestrator"}},
        "spec": {"groups": yaml.safe_load(rules_text)["groups"]},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line PromQL as literal blocks, as rules.yml writes it."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def render() -> str:
    rule = prometheus_rule(RULES.read_text(encoding="utf-8"))
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=110)


if __name__ == "__main__":
    OUTPUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUTPUT}\n")
