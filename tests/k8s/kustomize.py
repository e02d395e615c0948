"""A minimal, faithful ``kubectl kustomize`` for the features deploy/k8s uses (no kubectl here).

Supported: ``resources`` (files, and directories holding a kustomization), ``namespace``,
``labels`` (``pairs``, metadata only, as with ``includeSelectors: false``), ``images``. Any other
field is an error, so an overlay that starts using, say, ``patches`` fails here loudly instead of
rendering something kustomize would not. Like kustomize, two objects with the same
group/kind/namespace/name are an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Node",
                  "PriorityClass", "StorageClass"}


class KustomizeError(ValueError):
    pass


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIRECTORY`` would print, in order."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)} (extend tests/k8s/kustomize.py)")
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else _load(path)
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if k.get("namespace") and obj.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            if label.get("includeSelectors"):
                raise KustomizeError("labels with includeSelectors are not supported here")
            meta.setdefault("labels", {}).update(label.get("pairs", {}))
        for image in k.get("images", []):
            for container in _containers(obj):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        key = (group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{directory}: {key} appears twice")
        seen.add(key)
    return objects
