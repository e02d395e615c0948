"""A Kubernetes API emulator over real HTTP on 127.0.0.1, for tests and for trying things out.

It is kmock's in-memory ``KubernetesEmulator`` (by kopf's author) with the few behaviours of a
real API server that the official ``kubernetes`` client and a kopf operator rely on:

* ``201 Created`` on create, with ``uid``, ``resourceVersion``, ``generation`` and
  ``creationTimestamp`` filled in; ``resourceVersion`` changes on every write and ``generation``
  whenever ``spec`` changes;
* ``labelSelector`` and ``fieldSelector=metadata.name=...`` on list and watch;
* ``PUT`` (replace), with a ``409 Conflict`` on a stale ``resourceVersion``;
* the ``status`` subresource: ``PATCH .../status`` changes only ``status``, and a patch of the
  object itself leaves ``status`` alone (as for any resource declared with a status subresource);
* custom resources validated against their CRD's ``openAPIV3Schema`` on create and replace,
  answered with ``422 Invalid`` and the field paths, like ``kubectl apply`` sees;
* the core group version reported as ``v1`` in discovery;
* a Secret's ``stringData`` written into ``data`` (base64) on create, as the API server does;
* a delete's ``preconditions`` (``uid``, ``resourceVersion``): ``409 Conflict`` when they fail.

There is no garbage collector (owner references are stored, not acted on), no admission and no
scheduler: what a test wants to happen to pods or RayJobs, it writes itself.

    with KubeEmulator() as kube:
        kube.register_crd(crd_manifest)
        api = kube.api_client()          # the official client, over HTTP
        kube.write_kubeconfig(path)      # for the CLI: KUBECONFIG=path
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime
import itertools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpointer
import kmock
import yaml
from kmock._internal import enums, rendering

from orchestrator.testing.selectors import matches_fields, matches_labels
from orchestrator.testing.validation import schema_errors, validator_for_crd

#: (group/version/plural, kind, namespaced, subresources): what a cluster with KubeRay serves.
DEFAULT_RESOURCES: tuple[tuple[str, str, bool, tuple[str, ...]], ...] = (
    ("v1/namespaces", "Namespace", False, ("status",)),
    ("v1/nodes", "Node", False, ("status",)),
    ("v1/configmaps", "ConfigMap", True, ()),
    ("v1/events", "Event", True, ()),
    ("v1/pods", "Pod", True, ("status", "log")),
    ("v1/services", "Service", True, ("status",)),
    ("coordination.k8s.io/v1/leases", "Lease", True, ()),
    ("v1/secrets", "Secret", True, ()),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, ()),
    ("ray.io/v1/rayjobs", "RayJob", True, ("status",)),
    ("ray.io/v1/rayclusters", "RayCluster", True, ("status",)),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, ("status",)),
)


def rayjob_crd_stub(*, secret_name: bool = True) -> dict[str, Any]:
    """KubeRay's RayJob CustomResourceDefinition cut down to what the operator reads of it at
    start-up (``authOptions``, whose ``secretName`` KubeRay has from 1.6.0; ``secret_name=False``:
    a KubeRay 1.5); the rest of the schema is left open. The real one is 1.4 MB."""
    auth = {"mode": {"type": "string", "enum": ["disabled", "token"]}}
    if secret_name:
        auth["secretName"] = {"type": "string"}
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"rayClusterSpec": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"authOptions": {"type": "object", "properties": auth}}}},
        "x-kubernetes-preserve-unknown-fields": True}}, "x-kubernetes-preserve-unknown-fields": True}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "rayjobs.ray.io"},
            "spec": {"group": "ray.io", "scope": "Namespaced",
                     "names": {"kind": "RayJob", "listKind": "RayJobList", "plural": "rayjobs", "singular": "rayjob"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}, "subresources": {"status": {}}}]}}


#: The request this task answers (each HTTP request is served in a task of its own).
_ANSWERING: contextvars.ContextVar[rendering.Request | None] = contextvars.ContextVar("answering", default=None)
_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server behaviours listed in the module docstring."""

    _versions: Iterable[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _validators: dict[kmock.resource, Any] = attrs.field(factory=dict, init=False)
    _pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    _log: list[rendering.Request] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Discovery with a trailing slash, as the official client asks for it.
        self.fallback["get /api/"] << self._serve_api
        self.fallback["get /apis/"] << self._serve_apis

    async def _serve_api(self, request: rendering.Request) -> Any:
        payload: Any = await super()._serve_api(request)
        payload["serverAddressByClientCIDRs"] = [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        return payload

    def __iter__(self) -> Iterator[rendering.Request]:
        """The requests kmock's reactions are matched against: the one being answered (this task's)."""
        request = _ANSWERING.get()
        if request is not None:
            yield request

    @property
    def request_log(self) -> list[rendering.Request]:
        """Every request served so far, oldest first (method, resource, params, headers...)."""
        return list(self._log)

    def declare(self, path: str, kind: str, namespaced: bool, subresources: Iterable[str] = ()) -> None:
        """Serve a resource (``group/version/plural``) in discovery, list and watch."""
        self.resources[path] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, subresources=set(subresources), verbs=set(_VERBS),
            singular=kind.lower(),
        )

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CustomResourceDefinition's resource and validate its objects by its schema."""
        spec = crd["spec"]
        for version in spec["versions"]:
            path = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
            self.declare(path, spec["names"]["kind"], spec.get("scope", "Namespaced") == "Namespaced",
                         tuple(version.get("subresources", {})))
            self._validators[kmock.resource(path)] = validator_for_crd(crd, version["name"])

    # -- writes ---------------------------------------------------------------------------------

    def set_pod_log(self, namespace: str, pod: str, text: str) -> None:
        """What ``GET .../pods/POD/log`` answers (there are no containers to log anything)."""
        self._pod_logs[(namespace, pod)] = text

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock finds the reactions for a request by scanning every request it has ever served
        # (``request in view``), so a long-lived emulator (one per test session) slows down
        # quadratically. Our reactions use no slices or counts: the view of the request being
        # answered needs only that request (see ``__iter__``); the history is ``request_log``.
        self._log.append(request)
        self._requests.clear()
        _ANSWERING.set(request)
        if request.subresource == "log" and request.method == "GET" and request.name is not None:
            self._current(request)  # 404 for a pod that does not exist
            return aiohttp.web.Response(text=self._pod_logs.get((request.namespace or "", request.name), ""),
                                        content_type="text/plain")
        if request.method == "DELETE" and request.name is not None and isinstance(request.data, dict):
            self._check_preconditions(request, request.data.get("preconditions") or {})
        if request.resource is not None and isinstance(request.data, (dict, list)):
            if request.method == "PUT" and request.name is not None and isinstance(request.data, dict):
                return await self._replace(request)
            if request.action == enums.action.CREATE:
                self._prepare_create(request)
            elif request.action == enums.action.UPDATE:
                self._prepare_patch(request)
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200:
            response.set_status(201)
        return response

    def _check_preconditions(self, request: rendering.Request, preconditions: Mapping[str, Any]) -> None:
        """A delete's ``preconditions`` (uid, resourceVersion): 409 when the object is another now."""
        meta = self._current(request).raw.get("metadata", {})
        for key in ("uid", "resourceVersion"):
            if preconditions.get(key) and preconditions[key] != meta.get(key):
                raise kmock.KubernetesError(
                    status=409, reason="Conflict",
                    message=f"Precondition failed: {key} in precondition: {preconditions[key]}, "
                            f"{key} in object meta: {meta.get(key)}")

    def _next_version(self) -> str:
        return str(next(self._versions))  # type: ignore[call-overload]

    def _validate(self, request: rendering.Request, obj: Mapping[str, Any]) -> None:
        validator = self._validators.get(request.resource)  # type: ignore[call-overload,arg-type]
        if validator is None:
            return
        errors = schema_errors(validator, obj)
        if errors:
            kind = obj.get("kind", "object")
            name = obj.get("metadata", {}).get("name", "")
            raise kmock.KubernetesError(
                status=422, reason="Invalid",
                message=f'{kind} "{name}" is invalid: ' + "; ".join(errors),
                details={"name": name, "kind": kind,
                         "causes": [{"reason": "FieldValueInvalid", "message": e} for e in errors]},
            )

    def _prepare_create(self, request: rendering.Request) -> None:
        data = request.data
        meta = data.setdefault("metadata", {})
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        self._validate(request, data)
        is_secret = request.resource is not None and request.resource.group == "" and request.resource.plural == "secrets"
        if is_secret and isinstance(data.get("stringData"), dict):
            encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in data.pop("stringData").items()}
            data["data"] = {**(data.get("data") or {}), **encoded}
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_version(), generation=1,
                    creationTimestamp=_now())

    def _current(self, request: rendering.Request) -> Any:
        key: Any = (request.resource, request.namespace, request.name)  # kmock's key, its parts set here
        obj = self.objects[key] if key in self.objects else None
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj

    def _has_status(self, request: rendering.Request) -> bool:
        info: Any = self.resources.get(request.resource) if request.resource in self.resources else None  # type: ignore[arg-type]
        return bool(info is not None and "status" in info.subresources)

    def _prepare_json_patch(self, request: rendering.Request, ops: list[dict[str, Any]]) -> None:
        """RFC 6902: ``test`` operations fail with 422 (kopf relies on it for optimistic
        concurrency); the status subresource rules apply by path; resourceVersion moves on."""
        current = self._current(request).raw
        for op in ops:
            if op.get("op") == "test":
                try:
                    found = jsonpointer.resolve_pointer(current, op["path"])
                except jsonpointer.JsonPointerException:
                    found = None
                if found != op.get("value"):
                    raise kmock.KubernetesError(status=422, reason="Invalid",
                                                message=f"the test of {op['path']} failed: {found!r} != {op.get('value')!r}")
        on_status = [op for op in ops if op.get("path", "").split("/")[1:2] == ["status"]]
        dropped = [op for op in ops if op not in on_status] if request.subresource == "status" else \
            on_status if self._has_status(request) else []
        for op in dropped:
            if op.get("op") != "test":
                ops.remove(op)
        ops.append({"op": "add", "path": "/metadata/resourceVersion", "value": self._next_version()})

    def _prepare_patch(self, request: rendering.Request) -> None:
        if isinstance(request.data, list):
            return self._prepare_json_patch(request, request.data)
        data: dict[str, Any] = request.data
        current = self._current(request)
        if request.subresource == "status":
            for key in [k for k in data if k != "status"]:
                del data[key]
        elif self._has_status(request):
            data.pop("status", None)
        meta = data.setdefault("metadata", {})
        for frozen in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            meta.pop(frozen, None)
        meta["resourceVersion"] = self._next_version()
        if "spec" in data and request.subresource != "status":
            meta["generation"] = int(current.raw.get("metadata", {}).get("generation", 1)) + 1

    async def _replace(self, request: rendering.Request) -> Any:
        async with self._lock:
            current = self._current(request)
            old: dict[str, Any] = current.raw
            new: dict[str, Any] = json.loads(json.dumps(request.data))
            old_meta = old.get("metadata", {})
            given = new.get("metadata", {}).get("resourceVersion")
            if given and given != old_meta.get("resourceVersion"):
                raise kmock.KubernetesError(
                    status=409, reason="Conflict",
                    message="the object has been modified; please apply your changes to the latest version",
                )
            if request.subresource == "status":
                new = {**old, "status": new.get("status")}
            elif self._has_status(request) and "status" in old:
                new["status"] = old["status"]
            self._validate(request, new)
            meta = new.setdefault("metadata", {})
            for frozen in ("uid", "creationTimestamp", "namespace", "name"):
                if frozen in old_meta:
                    meta[frozen] = old_meta[frozen]
            generation = int(old_meta.get("generation", 1))
            meta["generation"] = generation + (new.get("spec") != old.get("spec"))
            meta["resourceVersion"] = self._next_version()
            current.create(new)  # a new version of the object (kmock keeps the history)
            raw = current.raw
            bus = self._buses[request.resource]  # type: ignore[index]
            await bus.put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    # -- reads ----------------------------------------------------------------------------------

    def _selected(self, request: rendering.Request) -> list[dict[str, Any]]:
        params = request.params or {}
        out = []
        for (resource, namespace, _name), obj in self.objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            raw = obj.raw
            if matches_labels(raw, params.get("labelSelector")) and matches_fields(raw, params.get("fieldSelector")):
                out.append(raw)
        return out

    async def _serve_list(self, request: rendering.Request) -> Any:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._selected(request)
        info: Any = self.resources.get(request.resource) if request.resource in self.resources else None  # type: ignore[arg-type]
        kind = (info.kind if info is not None and info.kind else "Object") + "List"
        group_version = "/".join(p for p in (request.resource.group, request.resource.version) if p)  # type: ignore[union-attr]
        return {"apiVersion": group_version, "kind": kind,
                "metadata": {"resourceVersion": str(self._peek_version())}, "items": items}

    def _peek_version(self) -> int:
        return max((int(o.raw.get("metadata", {}).get("resourceVersion", 0) or 0)
                    for o in self.objects.values() if not o.deleted), default=0)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        yield b""  # send the headers: the client waits for them before it reads events
        params = request.params or {}
        bus = self._buses[request.resource]  # type: ignore[index]
        async with self._lock:  # mark the bus and list under one lock: no event falls in between
            marker = await bus.mark()
            initial = [{"type": "ADDED", "object": raw} for raw in self._selected(request)]
        try:
            for event in initial:
                yield event
            async for event in bus.stream(since=marker):
                obj = event.get("object", {})
                if request.namespace is not None and obj.get("metadata", {}).get("namespace") != request.namespace:
                    continue
                if matches_labels(obj, params.get("labelSelector")) and matches_fields(obj, params.get("fieldSelector")):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _serve_version(self, request: rendering.Request) -> Any:
        payload: Any = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            payload["groupVersion"] = request.resource.version  # core: "v1", not "/v1"
        return payload


class KubeEmulator:
    """:class:`ApiServer` served over HTTP on 127.0.0.1 by an event loop in a background thread."""

    def __init__(self, resources: Iterable[tuple[str, str, bool, tuple[str, ...]]] = DEFAULT_RESOURCES,
                 crds: Iterable[Mapping[str, Any]] | None = None) -> None:
        """``crds``: CustomResourceDefinition objects there from the start (default: KubeRay's
        RayJob one, :func:`rayjob_crd_stub`; stored as objects only, nothing validated by them)."""
        self._resources = tuple(resources)
        self._crds = [rayjob_crd_stub()] if crds is None else list(crds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.server: ApiServer | None = None
        self.url = ""

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 300.0) -> KubeEmulator:
        """Start serving; returns once the port is open (``url`` is set)."""
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the Kubernetes API emulator did not start")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes API emulator failed: {self._error!r}")
        for crd in self._crds:
            self.put_crd(crd)
        return self

    def put_crd(self, crd: Mapping[str, Any]) -> None:
        """Create (or replace) a CustomResourceDefinition object, as ``kubectl apply`` of it would."""
        import kubernetes

        extensions = kubernetes.client.ApiextensionsV1Api(self.api_client())
        name = crd["metadata"]["name"]
        try:
            extensions.delete_custom_resource_definition(name, _preload_content=False)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
        extensions.create_custom_resource_definition(dict(crd), _preload_content=False)  # type: ignore[arg-type]

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ApiServer() as server, kmock.Server(server) as http:
            for path, kind, namespaced, subresources in self._resources:
                server.declare(path, kind, namespaced, subresources)
            self.server = server
            self.url = str(http.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(60)
        self._loop = None

    def call(self, func: Any, *args: Any) -> Any:
        """Run ``func(*args)`` in the emulator's loop (thread-safe access to its state)."""
        assert self._loop is not None, "start() the emulator first"

        async def run() -> Any:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(60)

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        assert self.server is not None, "start() the emulator first"
        self.call(self.server.register_crd, crd)

    def set_pod_log(self, namespace: str, pod: str, text: str) -> None:
        assert self.server is not None, "start() the emulator first"
        self.call(self.server.set_pod_log, namespace, pod, text)

    def api_client(self) -> Any:
        """An official-client ``ApiClient`` talking to this emulator."""
        import kubernetes

        config = kubernetes.client.Configuration()
        config.host = self.url
        return kubernetes.client.ApiClient(config)

    def write_kubeconfig(self, path: Path, *, context: str = "emulator", namespace: str = "default") -> Path:
        """A kubeconfig file pointing at the emulator (for the CLI and kopf's login)."""
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": "emulator"}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path
