"""What the operator needs of the installed KubeRay, checked from its RayJob CRD (pure).

The operator gives each Ray cluster a token Secret of its own and names it in
``rayClusterSpec.authOptions.secretName``. KubeRay before 1.6.0 has ``authOptions.mode`` but no
``secretName``: its API server drops the unknown field without a word, KubeRay makes a token Secret
of its own, and the Ray pods (which read ours) and KubeRay's own calls disagree on the token. The
field in the installed CRD's schema is the one reliable sign of a KubeRay that honours it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.backends.k8s import RAY_GROUP, RAY_PLURAL, RAY_VERSION
from orchestrator.errors import NotAvailableError

#: The RayJob CRD's name, as ``kubectl get crd`` lists it.
RAYJOB_CRD_NAME = f"{RAY_PLURAL}.{RAY_GROUP}"
#: The first KubeRay release with ``authOptions.secretName`` (ray-project/kuberay#4554).
KUBERAY_MIN_VERSION = "1.6.0"
#: Where the field lives in the RayJob schema.
SECRET_NAME_PATH = ("spec", "rayClusterSpec", "authOptions", "secretName")
UPGRADE_FIX = (f"upgrade KubeRay to {KUBERAY_MIN_VERSION} or newer (its CRDs too: helm upgrade does not update "
               "CRDs, so `kubectl apply --server-side -f` the chart's crds/ folder), then restart the operator")


def rayjob_crd_error(crd: Mapping[str, Any] | None) -> NotAvailableError | None:
    """What the installed RayJob CRD (``None``: not installed) lacks for this operator, as an error
    with its fix; ``None`` when it is fine."""
    if crd is None:
        return NotAvailableError(f"KubeRay's RayJob CRD {RAYJOB_CRD_NAME} is not installed",
                                 fix=f"install KubeRay {KUBERAY_MIN_VERSION} or newer first (docs/kubernetes.md, "
                                     "step 1), then start the operator")
    versions = {v.get("name"): v for v in crd.get("spec", {}).get("versions") or []}
    version = versions.get(RAY_VERSION)
    if version is None or not version.get("served", True):
        return NotAvailableError(f"KubeRay's RayJob CRD {RAYJOB_CRD_NAME} does not serve {RAY_GROUP}/{RAY_VERSION}",
                                 fix=UPGRADE_FIX)
    node: Any = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    for key in SECRET_NAME_PATH:
        node = (node.get("properties") or {}).get(key) if isinstance(node, Mapping) else None
        if node is None:
            return NotAvailableError(
                f"the installed KubeRay is older than {KUBERAY_MIN_VERSION}: its RayJob CRD {RAYJOB_CRD_NAME} has no "
                f"{'.'.join(SECRET_NAME_PATH)}, so the per-job Ray token Secret would be dropped silently and "
                "KubeRay would give each Ray cluster a token of its own", fix=UPGRADE_FIX)
    return None
