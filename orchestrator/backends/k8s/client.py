"""A narrow, typed door to the Kubernetes API (official ``kubernetes`` client), shared by the
``kubernetes`` backend and the operator.

Only the calls the project makes are here, so the RBAC in deploy/k8s can grant exactly them.
API errors become project errors: unreachable or overloaded servers (and 5xx, 429) are
:class:`TransientBackendError` (the operator retries them), the rest :class:`BackendError` with
the server's own message. Getters answer ``None`` for objects that do not exist.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.backends.k8s import GROUP, PLURAL, RAY_GROUP, RAY_PLURAL, RAY_VERSION, VERSION
from orchestrator.errors import BackendError, NotAvailableError, TransientBackendError

#: Seconds one API call may take (connect + read); the operator retries transient failures.
REQUEST_TIMEOUT = 30


def load_api_client(context: str | None = None) -> Any:
    """An ``ApiClient``: the pod's service account in a cluster (unless a context is asked for),
    otherwise the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``) and its current or given context."""
    try:
        import kubernetes
    except ImportError:
        raise NotAvailableError(
            "the kubernetes backend needs the 'kubernetes' package",
            fix="pip install 'train-orchestrator[kubernetes]'",
        ) from None
    if context is None:
        config = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
            return kubernetes.client.ApiClient(config)
        except kubernetes.config.ConfigException:
            pass  # not in a pod: use the kubeconfig
    try:
        return kubernetes.config.new_client_from_config(context=context)
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise NotAvailableError(
            f"cannot load a Kubernetes configuration{f' for context {context!r}' if context else ''}: {exc}",
            fix="point KUBECONFIG at a kubeconfig file, or pick a context with --context",
        ) from None


def _server_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or exc)


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Translate client exceptions raised while doing ``what`` into project errors."""
    import kubernetes
    import urllib3

    try:
        yield
    except kubernetes.client.ApiException as exc:
        status = exc.status or 0
        message = f"{what}: {_server_message(exc)} (HTTP {status})"
        if status >= 500 or status == 429 or status == 0:
            retry = exc.headers.get("Retry-After") if exc.headers else None
            raise TransientBackendError(message, retry_after=float(retry) if retry else None) from None
        raise BackendError(message) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientBackendError(f"{what}: cannot reach the Kubernetes API ({exc})",
                                    fix="check the cluster, the kubeconfig and --context") from None


def _is_status(exc: BaseException, *codes: int) -> bool:
    return getattr(exc, "status", None) in codes


class KubeApi:
    """The calls the backend and the operator make, over an official-client ``ApiClient``."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self.api_client = api_client
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self._api_exception = kubernetes.client.ApiException

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    # -- TrainingJobs -----------------------------------------------------------------------

    def create_training_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ns = body["metadata"]["namespace"]
        with api_errors(f"create TrainingJob {ns}/{body['metadata']['name']}"):
            out: dict[str, Any] = self.custom.create_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, ns, PLURAL, body, field_validation="Strict", _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]
        return out

    def get_training_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(GROUP, VERSION, PLURAL, namespace, name, "TrainingJob")

    def list_training_jobs(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return self._list(GROUP, VERSION, PLURAL, namespace, selector, "TrainingJobs")

    def patch_training_job(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any] | None:
        with self._missing_is_none(), api_errors(f"patch TrainingJob {namespace}/{name}"):
            out: dict[str, Any] = self.custom.patch_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]
            return out
        return None

    def patch_training_job_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        with self._missing_is_none(), api_errors(f"update the status of TrainingJob {namespace}/{name}"):
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}, _request_timeout=REQUEST_TIMEOUT)

    def delete_training_job(self, namespace: str, name: str) -> bool:
        return self._delete(GROUP, VERSION, PLURAL, namespace, name, "TrainingJob")

    # -- RayJobs ----------------------------------------------------------------------------

    def list_rayjobs(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return self._list(RAY_GROUP, RAY_VERSION, RAY_PLURAL, namespace, selector, "RayJobs")

    def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(RAY_GROUP, RAY_VERSION, RAY_PLURAL, namespace, name, "RayJob")

    def create_rayjob(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; ``None`` when a RayJob of that name already exists (the caller looks it up)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            with api_errors(f"create RayJob {ns}/{name}"):
                out: dict[str, Any] = self.custom.create_namespaced_custom_object(  # type: ignore[assignment]
                    RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, body, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]
                return out
        except BackendError as exc:
            if "(HTTP 409)" in exc.message:
                return None
            raise

    def delete_rayjob(self, namespace: str, name: str) -> bool:
        return self._delete(RAY_GROUP, RAY_VERSION, RAY_PLURAL, namespace, name, "RayJob")

    # -- Secrets and NetworkPolicies (per job) ---------------------------------------------------

    def create_secret(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; ``None`` when a Secret of that name already exists (the caller looks it up)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        with api_errors(f"create Secret {ns}/{name}"):
            try:
                created = self.core.create_namespaced_secret(ns, body, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]
            except self._api_exception as exc:
                if _is_status(exc, 409):
                    return None
                raise
        return self._plain(created)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._missing_is_none(), api_errors(f"read Secret {namespace}/{name}"):
            return self._plain(self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT))
        return None

    def list_secrets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with api_errors(f"list Secrets in {namespace}"):
            result = self.core.list_namespaced_secret(namespace, label_selector=selector,
                                                      _request_timeout=REQUEST_TIMEOUT)
        return [self._plain(item) for item in result.items]

    def delete_secret(self, namespace: str, name: str) -> bool:
        with self._missing_is_none(), api_errors(f"delete Secret {namespace}/{name}"):
            self.core.delete_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
            return True
        return False

    def apply_network_policy(self, body: Mapping[str, Any]) -> None:
        """Create the NetworkPolicy, or set its spec if it exists (idempotent)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        with api_errors(f"write NetworkPolicy {ns}/{name}"):
            try:
                self.networking.create_namespaced_network_policy(ns, body, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]
            except self._api_exception as exc:
                if not _is_status(exc, 409):
                    raise
                self.networking.patch_namespaced_network_policy(name, ns, {"spec": body["spec"]},
                                                                _request_timeout=REQUEST_TIMEOUT)

    def list_network_policies(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with api_errors(f"list NetworkPolicies in {namespace}"):
            result = self.networking.list_namespaced_network_policy(namespace, label_selector=selector,
                                                                     _request_timeout=REQUEST_TIMEOUT)
        return [self._plain(item) for item in result.items]

    def delete_network_policy(self, namespace: str, name: str) -> bool:
        with self._missing_is_none(), api_errors(f"delete NetworkPolicy {namespace}/{name}"):
            self.networking.delete_namespaced_network_policy(name, namespace, _request_timeout=REQUEST_TIMEOUT)
            return True
        return False

    # -- ConfigMaps (node pools, read only), Nodes, Events, Pods ---------------------------------

    def list_configmaps(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        with api_errors("list ConfigMaps"):
            if namespace is None:
                result = self.core.list_config_map_for_all_namespaces(
                    label_selector=selector, _request_timeout=REQUEST_TIMEOUT)
            else:
                result = self.core.list_namespaced_config_map(namespace, label_selector=selector,
                                                              _request_timeout=REQUEST_TIMEOUT)
        return [self.api_client.sanitize_for_serialization(item) for item in result.items]

    def list_nodes(self) -> list[dict[str, Any]]:
        with api_errors("list Nodes"):
            result = self.core.list_node(_request_timeout=REQUEST_TIMEOUT)
        return [self.api_client.sanitize_for_serialization(item) for item in result.items]

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        with api_errors(f"post an Event in {namespace}"):
            self.core.create_namespaced_event(namespace, event, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with api_errors(f"list Pods in {namespace}"):
            result = self.core.list_namespaced_pod(namespace, label_selector=selector,
                                                   _request_timeout=REQUEST_TIMEOUT)
        return [self.api_client.sanitize_for_serialization(item) for item in result.items]

    def pod_log(self, namespace: str, name: str, *, follow: bool = False) -> Iterator[str]:
        """The pod's log, line by line (``follow``: until the container ends)."""
        with api_errors(f"read the log of Pod {namespace}/{name}"):
            response = self.core.read_namespaced_pod_log(name, namespace, follow=follow, _preload_content=False)
            pending = b""
            for chunk in response.stream(4096):  # type: ignore[attr-defined]
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")

    # -- helpers ----------------------------------------------------------------------------

    def _plain(self, obj: Any) -> dict[str, Any]:
        """An official-client model as plain JSON-like data (camelCase keys, as the API sends)."""
        out: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)
        return out

    @contextlib.contextmanager
    def _missing_is_none(self) -> Iterator[None]:
        """Let a 404 end the ``with`` block quietly (the caller returns its 'missing' value)."""
        try:
            yield
        except BackendError as exc:
            if "(HTTP 404)" not in exc.message:
                raise

    def _get(self, group: str, version: str, plural: str, ns: str, name: str, kind: str) -> dict[str, Any] | None:
        with self._missing_is_none(), api_errors(f"read {kind} {ns}/{name}"):
            out: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                group, version, ns, plural, name, _request_timeout=REQUEST_TIMEOUT)
            return out
        return None

    def _list(self, group: str, version: str, plural: str, ns: str | None, selector: str | None,
              kinds: str) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT}
        if selector:
            kwargs["label_selector"] = selector
        with api_errors(f"list {kinds}"):
            if ns is None:
                result = self.custom.list_cluster_custom_object(group, version, plural, **kwargs)
            else:
                result = self.custom.list_namespaced_custom_object(group, version, ns, plural, **kwargs)
        return list(result.get("items", []))  # type: ignore[attr-defined]

    def _delete(self, group: str, version: str, plural: str, ns: str, name: str, kind: str) -> bool:
        with self._missing_is_none(), api_errors(f"delete {kind} {ns}/{name}"):
            self.custom.delete_namespaced_custom_object(
                group, version, ns, plural, name, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT)
            return True
        return False
