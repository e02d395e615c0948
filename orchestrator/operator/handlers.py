"""Thin kopf handlers over :class:`Controller`, and the operator's entry point.

Handlers (all on a registry of their own, so several operators can live in one process -- tests
restart one mid-flight):

* TrainingJob created / updated / resumed (operator start) -> ``Controller.sync``;
* TrainingJob deleted (watch event) -> ``Controller.forget`` (no finalizer: a deletion is never
  blocked by a stopped operator; owner references let Kubernetes' garbage collector clean up then);
* a RayJob we manage changes -> ``sync`` of its TrainingJob (status mirroring);
* a pool ConfigMap (or, with ``--pools-from-nodes``, a Node) changes -> ``refresh_pools``;
* every ``retry_interval_s`` the waiting jobs are nudged again (a plain asyncio task beside kopf,
  not a kopf timer: kopf's timers put a finalizer on every object they watch, and adding and
  removing it raced the operator's own status writes).

Project errors map to kopf's: transient -> ``TemporaryError`` (retried after ``retry_after``),
others -> ``PermanentError``. kopf keeps its bookkeeping in annotations prefixed
``kopf.orchestrator.dev/``, so the TrainingJob's status holds only what :class:`TrainingJobStatus` says.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import kopf

from orchestrator.backends.k8s import (
    GROUP,
    JOB_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PLURAL,
    POOLS_CONFIGMAP_LABEL,
    RAY_GROUP,
    RAY_PLURAL,
    RAY_VERSION,
    VERSION,
)
from orchestrator.backends.k8s.client import KubeApi
from orchestrator.errors import OrchestratorError
from orchestrator.operator.controller import Controller
from orchestrator.operator.leader import ElectionConfig, LeaderElector, run_elected

log = logging.getLogger("orchestrator.operator")
#: Prefix of kopf's bookkeeping annotations on TrainingJobs.
KOPF_PREFIX = f"kopf.{GROUP}"


def _kopf_errors(func: Callable[[], Any]) -> Any:
    try:
        return func()
    except OrchestratorError as exc:
        if exc.transient:
            raise kopf.TemporaryError(exc.render(), delay=exc.retry_after or 10) from None
        raise kopf.PermanentError(exc.render()) from None


def connection_info(api: KubeApi) -> kopf.ConnectionInfo:
    """kopf's credentials from the official client's configuration (one source for both)."""
    config = api.api_client.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").partition(" ")
    if header and not token:
        scheme, token = "Bearer", header
    return kopf.ConnectionInfo(
        server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
        scheme=scheme or None, token=token or None,
        certificate_path=config.cert_file, private_key_path=config.key_file,
    )


def build_registry(controller: Controller, api: KubeApi) -> kopf.OperatorRegistry:
    """Every handler of one operator, on a fresh registry."""
    registry = kopf.OperatorRegistry()
    config = controller.config
    on = kopf.on

    @on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(api)

    @on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf ignores annotations under its own prefix when it diffs objects; ours (the retry
        # nudge, orchestrator.dev/retry) must count as a change, hence a prefix of kopf's own.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration")
        settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
        settings.scanning.disabled = True  # resources are known; no cluster-wide CRD watch (less RBAC)
        settings.posting.level = logging.WARNING  # our own Events say what matters
        settings.execution.max_workers = config.max_workers
        _kopf_errors(controller.refresh_pools)
        restored = _kopf_errors(controller.restore_all)
        log.info("operator started: %d running jobs restored", restored)
        if config.metrics_port is not None and not controller.metrics.serving:  # (a standby serves them already)
            port = controller.metrics.serve(config.metrics_port, config.metrics_host)
            log.info("metrics on %s:%d/metrics", config.metrics_host, port)

    @on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        controller.metrics.close()

    @on.probe(id="pools", registry=registry)
    def pools_probe(**_: Any) -> int:
        cluster = controller.book.cluster
        return len(cluster.pools) if cluster is not None else 0

    def sync(body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        _kopf_errors(lambda: controller.sync(meta["namespace"], meta["name"]))

    for reason, decorator in (("resume", on.resume), ("create", on.create), ("update", on.update)):
        decorator(GROUP, VERSION, PLURAL, registry=registry, id=f"reconcile-{reason}")(sync)

    @on.event(GROUP, VERSION, PLURAL, registry=registry, id="deleted")
    def deleted(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            meta = body["metadata"]
            _kopf_errors(lambda: controller.forget(meta["namespace"], meta["name"], meta.get("uid")))

    @on.event(RAY_GROUP, RAY_VERSION, RAY_PLURAL, registry=registry, id="rayjob",
              labels={MANAGED_BY_LABEL: MANAGED_BY})
    def rayjob_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        owner = (body["metadata"].get("labels") or {}).get(JOB_LABEL)
        if owner:
            _kopf_errors(lambda: controller.sync(body["metadata"]["namespace"], owner))

    if config.pools_namespace is None:  # pools in every namespace: kopf watches ConfigMaps cluster-wide
        @on.event("", "v1", "configmaps", registry=registry, id="pools", labels={POOLS_CONFIGMAP_LABEL: "true"})
        def pools_changed(**_: Any) -> None:
            _kopf_errors(controller.refresh_pools)

    if config.pools_from_nodes:
        @on.event("", "v1", "nodes", registry=registry, id="nodes")
        def nodes_changed(**_: Any) -> None:
            _kopf_errors(controller.refresh_pools)

    return registry


async def run_operator(controller: Controller, api: KubeApi, *, stop_flag: Any = None, ready_flag: Any = None,
                       preflight: bool = True) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or forever); first
    (``preflight``) check the installed KubeRay, and refuse to start when it cannot work."""
    if preflight:
        await asyncio.to_thread(controller.check_kuberay)
    config = controller.config
    namespaces: Collection[str] = config.namespaces
    retry = asyncio.create_task(_every(config.retry_interval_s, controller.retry_waiting, "retry the waiting jobs"))
    # kopf watches every resource in the same namespaces (all of them, cluster-wide); the pools
    # namespace alone is polled instead, so the operator needs no ConfigMap access anywhere else.
    pools = None
    if config.pools_namespace is not None:
        pools = asyncio.create_task(_every(config.pools_poll_s, controller.refresh_pools, "re-read the node pools"))
    try:
        await kopf.operator(
            registry=build_registry(controller, api), standalone=True, clusterwide=not namespaces,
            namespaces=list(namespaces), liveness_endpoint=config.liveness_endpoint, stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        retry.cancel()
        if pools is not None:
            pools.cancel()


async def _every(seconds: float, call: Callable[[], Any], what: str) -> None:
    """Run ``call`` in a thread every ``seconds``; a failure is logged and the next round tries again.
    The safety net behind the event-driven retries (waiting jobs), and the poll of the
    ``--pools-namespace`` ConfigMaps (a change re-places the waiting jobs)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(call)
        except OrchestratorError as exc:
            log.warning("could not %s: %s", what, exc.render())


async def run_operator_elected(controller: Controller, api: KubeApi, elector: LeaderElector, *,
                               stop_flag: Any = None, ready_flag: Any = None, standby_flag: Any = None,
                               leading_flag: Any = None) -> None:
    """The operator, run only while this replica holds the Lease (see :mod:`orchestrator.operator.leader`)."""
    async def lead(kopf_stop: threading.Event) -> None:
        await run_operator(controller, api, stop_flag=kopf_stop, ready_flag=ready_flag, preflight=False)

    await asyncio.to_thread(controller.check_kuberay)  # once, before standing by: a standby that could never lead

    await run_elected(lead, elector, liveness_endpoint=controller.config.liveness_endpoint, stop_flag=stop_flag,
                      standby_flag=standby_flag, leading_flag=leading_flag)


class OperatorThread:
    """The operator in a background thread with its own event loop (tests; embedding). With
    ``election``, it runs kopf only while it holds the Lease (``leading`` is set then)."""

    def __init__(self, controller: Controller, api: KubeApi, election: ElectionConfig | None = None) -> None:
        self.controller, self.api = controller, api
        self.elector = LeaderElector(api, election) if election is not None else None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._standby = threading.Event()
        self.leading = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orchestrator-operator", daemon=True)
        self.error: BaseException | None = None
        self.release_on_stop = True

    def _run(self) -> None:
        try:
            if self.elector is None:
                asyncio.run(run_operator(self.controller, self.api, stop_flag=self._stop, ready_flag=self._ready))
            else:
                asyncio.run(run_operator_elected(self.controller, self.api, self.elector, stop_flag=self._stop,
                                                 ready_flag=self._ready, standby_flag=self._standby,
                                                 leading_flag=self.leading))
                if self.release_on_stop:
                    self.elector.release()
        except BaseException as exc:  # noqa: BLE001 - kept for the owner to inspect
            self.error = exc
            self._ready.set()

    def start(self, timeout: float = 300.0) -> OperatorThread:
        """Start; returns once kopf is ready, or (with an election) once this replica stands by."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self._ready.is_set() or self._standby.is_set()):
            if time.monotonic() > deadline:
                raise RuntimeError("the operator did not start")
            time.sleep(0.05)
        if self.error is not None:
            raise RuntimeError(f"the operator failed to start: {self.error!r}")
        return self

    def stop(self, timeout: float = 120.0, *, release: bool = True) -> None:
        """Stop; ``release=False`` leaves the Lease held, as a crashed leader would."""
        self.release_on_stop = release
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
