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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends.k8s import GROUP, PLURAL, RAY_GROUP, RAY_PLURAL, RAY_VERSION, VERSION
from orchestrator.errors import BackendError, NotAvailableError, TransientBackendError, UsageError

#: The namespace of a pod's service account (read when there is no kubeconfig).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Seconds one API call may take (connect + read); the operator retries transient failures.
REQUEST_TIMEOUT = 30


@dataclass(frozen=True)
class KubeTarget:
    """Where the kubernetes backend works: the namespace, and the kubeconfig context it was taken
    from (``None``: no kubeconfig, as in a pod with its service account)."""

    namespace: str
    context: str | None
    #: Where the namespace came from, in words (for messages): "-n", "the context", "default".
    namespace_from: str


def kubeconfig_contexts(config_file: str | None = None) -> tuple[dict[str, dict[str, Any]], str | None] | None:
    """The kubeconfig's contexts by name and its current context; ``None`` when there is no
    kubeconfig (nor the ``kubernetes`` package to read one)."""
    try:
        import kubernetes
    except ImportError:
        return None
    try:
        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=config_file)
    except (kubernetes.config.ConfigException, OSError):
        return None
    by_name = {str(c.get("name")): dict(c.get("context") or {}) for c in contexts or []}
    return by_name, (str(current["name"]) if current and current.get("name") else None)


def kubeconfig_description(config_file: str | None = None) -> str:
    if config_file:
        return f"the kubeconfig {config_file} (KUBECONFIG)"
    try:
        from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION
    except ImportError:
        return "the kubeconfig ~/.kube/config"
    return f"the kubeconfig {KUBE_CONFIG_DEFAULT_LOCATION}"


def resolve_kube_target(namespace: str | None, context: str | None, config_file: str | None = None,
                        *, recorded: bool = False) -> KubeTarget:
    """The namespace and context to use: ``namespace`` if given, else the namespace of the given (or
    current) kubeconfig context, else ``default``. A named context the kubeconfig lacks is an error
    (``recorded``: the name came from the job's local record, and the message says so)."""
    found = kubeconfig_contexts(config_file)
    if found is None:
        if context is not None:
            raise NotAvailableError(
                f"no kubeconfig to find context {context!r} in: {kubeconfig_description(config_file)} is missing "
                "or unreadable",
                fix="point KUBECONFIG at a kubeconfig file (kubectl config view shows the one kubectl uses)",
            )
        if namespace:
            return KubeTarget(namespace, None, "-n")
        try:  # in a pod: its service account's namespace
            return KubeTarget(SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default", None,
                              "the pod's service account")
        except OSError:
            return KubeTarget("default", None, "default")
    contexts, current = found
    if context is not None and context not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        if recorded:
            raise UsageError(
                f"this job was submitted with kubeconfig context {context!r}, which no longer exists in "
                f"{kubeconfig_description(config_file)} (contexts: {known})",
                fix="pass --context CTX (and -n NS) naming the cluster the job runs on; `kubectl config "
                    "get-contexts` lists them",
            )
        raise UsageError(f"no context {context!r} in {kubeconfig_description(config_file)} (contexts: {known})",
                         fix="pick one of them with --context, or leave --context out for the current one")
    name = context or current
    if namespace:
        return KubeTarget(namespace, name, "-n")
    from_context = (contexts.get(name or "") or {}).get("namespace")
    if from_context:
        return KubeTarget(str(from_context), name, f"context {name}")
    return KubeTarget("default", name, "default")


def load_api_client(context: str | None = None, config_file: str | None = None) -> Any:
    """An ``ApiClient``: the pod's service account in a cluster (unless a context is asked for),
    otherwise the kubeconfig (``config_file``, else ``$KUBECONFIG`` or ``~/.kube/config``) and its
    current or given context."""
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
        return kubernetes.config.new_client_from_config(config_file=config_file, context=context)
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise NotAvailableError(
            f"cannot load a Kubernetes configuration{f' for context {context!r}' if context else ''} from "
            f"{kubeconfig_description(config_file)}: {exc}",
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


class KubeApi:
    """The calls the backend and the operator make, over an official-client ``ApiClient``."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self.api_client = api_client
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.coordination = kubernetes.client.CoordinationV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)

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
        return self._unless_conflict(f"create RayJob {ns}/{name}", lambda: self.custom.create_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, body, _request_timeout=REQUEST_TIMEOUT))

    def delete_rayjob(self, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete; with ``uid``, only that very object (as :meth:`delete_secret`)."""
        return self._delete(RAY_GROUP, RAY_VERSION, RAY_PLURAL, namespace, name, "RayJob", uid=uid)

    # -- Leases (leader election) ------------------------------------------------------------

    # ``timeout`` (seconds): the leader's renewals pass what is left of their renew deadline.

    def get_lease(self, namespace: str, name: str, *, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any] | None:
        with self._missing_is_none(), api_errors(f"read Lease {namespace}/{name}"):
            return self._plain(self.coordination.read_namespaced_lease(name, namespace, _request_timeout=timeout))
        return None

    def create_lease(self, body: Mapping[str, Any], *, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any] | None:
        """Create; ``None`` when a Lease of that name exists already (someone else was first)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._unless_conflict(f"create Lease {ns}/{name}", lambda: self.coordination.create_namespaced_lease(
            ns, body, _request_timeout=timeout))

    def replace_lease(self, body: Mapping[str, Any], *, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any] | None:
        """Replace, guarded by ``metadata.resourceVersion``; ``None`` on a conflict (the Lease
        changed since it was read: another replica wrote first)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._unless_conflict(f"update Lease {ns}/{name}", lambda: self.coordination.replace_namespaced_lease(
            name, ns, body, _request_timeout=timeout))

    def _unless_conflict(self, what: str, call: Any) -> dict[str, Any] | None:
        """``call()`` (a create, or a guarded replace) as plain data; ``None`` on a 409 (the name is
        taken, or the object changed since it was read): the caller decides what that means."""
        try:
            with api_errors(what):
                return self._plain(call())
        except BackendError as exc:
            if "(HTTP 409)" in exc.message:
                return None
            raise

    # -- Secrets and NetworkPolicies (per job) ---------------------------------------------------

    def create_secret(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; ``None`` when a Secret of that name already exists (the caller looks it up)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._unless_conflict(f"create Secret {ns}/{name}", lambda: self.core.create_namespaced_secret(
            ns, body, _request_timeout=REQUEST_TIMEOUT))

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._missing_is_none(), api_errors(f"read Secret {namespace}/{name}"):
            return self._plain(self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT))
        return None

    def list_secrets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with api_errors(f"list Secrets in {namespace}"):
            result = self.core.list_namespaced_secret(namespace, label_selector=selector,
                                                      _request_timeout=REQUEST_TIMEOUT)
        return [self._plain(item) for item in result.items]

    def delete_secret(self, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete; with ``uid``, only that very object (a precondition: a Secret recreated under
        the name since it was read is left alone, and False returned)."""
        with self._missing_is_none(), self._conflict_is_none(), api_errors(f"delete Secret {namespace}/{name}"):
            self.core.delete_namespaced_secret(name, namespace, body=self._preconditions(uid),
                                               _request_timeout=REQUEST_TIMEOUT)
            return True
        return False

    def create_network_policy(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; ``None`` when a NetworkPolicy of that name already exists (the caller looks it up)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self._unless_conflict(f"create NetworkPolicy {ns}/{name}",
                                     lambda: self.networking.create_namespaced_network_policy(
                                         ns, body, _request_timeout=REQUEST_TIMEOUT))

    def get_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._missing_is_none(), api_errors(f"read NetworkPolicy {namespace}/{name}"):
            return self._plain(self.networking.read_namespaced_network_policy(name, namespace,
                                                                              _request_timeout=REQUEST_TIMEOUT))
        return None

    def patch_network_policy_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        with api_errors(f"update NetworkPolicy {namespace}/{name}"):
            self.networking.patch_namespaced_network_policy(name, namespace, {"spec": dict(spec)},
                                                            _request_timeout=REQUEST_TIMEOUT)

    def list_network_policies(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with api_errors(f"list NetworkPolicies in {namespace}"):
            result = self.networking.list_namespaced_network_policy(namespace, label_selector=selector,
                                                                     _request_timeout=REQUEST_TIMEOUT)
        return [self._plain(item) for item in result.items]

    def delete_network_policy(self, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete; with ``uid``, only that very object (as :meth:`delete_secret`)."""
        with self._missing_is_none(), self._conflict_is_none(), \
                api_errors(f"delete NetworkPolicy {namespace}/{name}"):
            self.networking.delete_namespaced_network_policy(name, namespace, body=self._preconditions(uid),
                                                             _request_timeout=REQUEST_TIMEOUT)
            return True
        return False

    # -- CustomResourceDefinitions (KubeRay's, read at start-up) -----------------------------------

    def get_crd(self, name: str) -> dict[str, Any] | None:
        """A CustomResourceDefinition as plain data (read raw: the client's models would take a
        large schema apart and back); ``None`` when it is not installed."""
        import kubernetes

        extensions = kubernetes.client.ApiextensionsV1Api(self.api_client)
        with self._missing_is_none(), api_errors(f"read CustomResourceDefinition {name}"):
            response = extensions.read_custom_resource_definition(name, _preload_content=False,
                                                                  _request_timeout=REQUEST_TIMEOUT)
            out: dict[str, Any] = json.loads(response.data)
            return out
        return None

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

    def _preconditions(self, uid: str | None) -> Any:
        import kubernetes

        if uid is None:
            return None
        return kubernetes.client.V1DeleteOptions(preconditions=kubernetes.client.V1Preconditions(uid=uid))

    @contextlib.contextmanager
    def _conflict_is_none(self) -> Iterator[None]:
        """Let a 409 (a delete precondition that failed: another object has the name now) end the
        ``with`` block quietly."""
        try:
            yield
        except BackendError as exc:
            if "(HTTP 409)" not in exc.message:
                raise

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

    def _delete(self, group: str, version: str, plural: str, ns: str, name: str, kind: str, *,
                uid: str | None = None) -> bool:
        with self._missing_is_none(), self._conflict_is_none(), api_errors(f"delete {kind} {ns}/{name}"):
            self.custom.delete_namespaced_custom_object(
                group, version, ns, plural, name, propagation_policy="Background", body=self._preconditions(uid),
                _request_timeout=REQUEST_TIMEOUT)
            return True
        return False
