"""RBAC helpers: an evaluator of rendered Roles, ClusterRoles and their bindings (what a subject
may do, in which namespace), and the rules the requests the operator made to the emulator needed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.k8s.conftest import OPERATOR_AGENT

#: (apiGroup, resource[/subresource], verb), or with a fourth element, one object's name: a grant
#: limited by ``resourceNames``, or a request for that object (``used_rules(named=True)``).
Rule = tuple[str, ...]
#: A namespace, or None for cluster scope (cluster-scoped resources, and every namespace at once).
Scope = str | None
OPERATOR = ("orchestrator-system", "orchestrator-operator")


def role_rules(role: Mapping[str, Any]) -> set[Rule]:
    """A role's rules, one per (group, resource, verb); one per name too where ``resourceNames``
    limits the rule (a 4-tuple)."""
    out: set[Rule] = set()
    for rule in role.get("rules") or []:
        names = rule.get("resourceNames") or [None]
        out |= {(group, resource, verb) if name is None else (group, resource, verb, name)
                for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
                for name in names}
    return out


def matches(granted: Rule, wanted: Rule) -> bool:
    """Does ``granted`` allow ``wanted``? A grant limited to a name allows only a request for that
    name; a request of unknown name (3-tuple) needs an unlimited grant."""
    if len(granted) == 4 and (len(wanted) != 4 or granted[3] != wanted[3]):
        return False
    return all(g in ("*", w) for g, w in zip(granted[:3], wanted[:3], strict=True))


@dataclass
class Rbac:
    """What rendered RBAC objects grant a ServiceAccount, evaluated like the API server's
    authorizer: a ClusterRoleBinding grants its ClusterRole's rules everywhere (scope None); a
    RoleBinding grants its Role's or ClusterRole's rules in the binding's namespace only."""

    objects: list[dict[str, Any]]

    def _role(self, kind: str, name: str, namespace: str | None) -> Mapping[str, Any]:
        for obj in self.objects:
            meta = obj["metadata"]
            if obj["kind"] == kind and meta["name"] == name and (kind == "ClusterRole" or meta["namespace"] == namespace):
                return obj
        raise AssertionError(f"a binding names {kind} {name} (namespace {namespace}), which is not rendered")

    def grants(self, account: tuple[str, str] = OPERATOR) -> dict[Scope, set[Rule]]:
        """Every rule granted to ``account`` (namespace, name), by scope."""
        out: dict[Scope, set[Rule]] = {}
        for binding in self.objects:
            if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
                continue
            if not any(s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == account
                       for s in binding.get("subjects") or []):
                continue
            scope = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else None
            ref = binding["roleRef"]
            role = self._role(ref["kind"], ref["name"], scope)
            out.setdefault(scope, set()).update(role_rules(role))
        return out

    def allows(self, rule: Rule, namespace: Scope, account: tuple[str, str] = OPERATOR) -> bool:
        """May ``account`` do ``rule`` in ``namespace`` (None: cluster-wide or cluster-scoped)?"""
        grants = self.grants(account)
        scopes = [None] if namespace is None else [None, namespace]
        return any(matches(granted, rule) for scope in scopes for granted in grants.get(scope, ()))


def _verb(request: Any) -> str:
    method = str(getattr(request.method, "value", request.method)).upper()  # kmock's method is an enum
    params = request.params or {}
    if method == "GET":
        if params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def used_rules(requests: Iterable[Any], scope: Callable[[Any], Scope] | None = None, *,
               named: bool = False) -> set[tuple[Rule, Scope]]:
    """The rules the operator's requests (kopf's and its own client's) needed, with the namespace
    each was made in (None: cluster scope or all namespaces; ``scope(request)`` maps it, e.g.
    from a test's namespace to the one of an install); discovery is free. ``named``: a request for
    one object carries its name (4-tuples), for grants limited by ``resourceNames``."""
    used = set()
    for request in requests:
        agent = (request.headers or {}).get("User-Agent", "")
        if request.resource is None or not (agent == OPERATOR_AGENT or agent.startswith("kopf/")):
            continue
        if request.resource.plural is None:
            continue  # API discovery (/api/v1, /apis/group/version): allowed to every user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        where = scope(request) if scope is not None else request.namespace or None
        rule: Rule = (request.resource.group or "", resource, _verb(request))
        if named and request.name:
            rule = (*rule, request.name)
        used.add((rule, where))
    return used
