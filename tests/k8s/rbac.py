"""RBAC helpers: the operator's ClusterRole as (group, resource, verb) rules, and the rules the
requests it made to the emulator needed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from tests.conftest import REPO
from tests.k8s.conftest import OPERATOR_AGENT

Rule = tuple[str, str, str]


def granted_rules(role: str = "orchestrator-operator") -> set[Rule]:
    docs = yaml.safe_load_all((REPO / "deploy/k8s/rbac.yaml").read_text(encoding="utf-8"))
    [cluster_role] = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == role]
    return {(group, resource, verb) for rule in cluster_role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _verb(request: Any) -> str:
    method = str(getattr(request.method, "value", request.method)).upper()  # kmock's method is an enum
    params = request.params or {}
    if method == "GET":
        if params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def used_rules(requests: Iterable[Any]) -> set[Rule]:
    """The rules the operator's requests (kopf's and its own client's) needed; discovery is free."""
    used = set()
    for request in requests:
        agent = (request.headers or {}).get("User-Agent", "")
        if request.resource is None or not (agent == OPERATOR_AGENT or agent.startswith("kopf/")):
            continue
        if request.resource.plural is None:
            continue  # API discovery (/api/v1, /apis/group/version): allowed to every user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((request.resource.group or "", resource, _verb(request)))
    return used
