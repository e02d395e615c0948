"""Leader election over a ``coordination.k8s.io/v1`` Lease: two operator replicas, one acts.

Not kopf's peering (it pauses *every* operator of equal priority, so two equal replicas would both
stand still). The protocol is client-go's ``leaderelection``:

* the Lease (in the operator's namespace) names its ``holderIdentity`` (the pod's name), its
  ``leaseDurationSeconds`` and the holder's last ``renewTime``;
* a candidate takes a Lease that is absent (create: only one create of a name succeeds), free (no
  holder) or expired, and the holder renews it; every write is a replace guarded by the
  ``resourceVersion`` that was read, so of two replicas that race, one gets ``409 Conflict`` and
  loses: two can never both win;
* "expired" is judged on the candidate's own monotonic clock: the Lease has not changed for
  ``lease_duration_s`` since this candidate last saw it change (no trust in another node's clock);
* the leader gives up acting when it could not renew for ``renew_deadline_s`` (shorter than the
  lease duration), so it has stopped before a standby may take over. A renewal counts from the
  moment its request was sent (the standby saw the Lease change no earlier than that); each round
  is bounded by what is left of the renew deadline (``asyncio.wait_for``, and the same limit as
  the Lease calls' request timeout), and a watchdog stops kopf the moment the deadline passes, even
  while a round still hangs on a Lease call.

Only the leader runs kopf's handlers (:func:`run_elected`): the standby watches nothing. On
takeover kopf starts as at any start: ``restore_all`` rebuilds the book and its resume handlers
reconcile every TrainingJob, whose RayJobs are found by label (and are named after the
TrainingJob), so a job that already has one never gets a second.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.backends.k8s.client import REQUEST_TIMEOUT, KubeApi
from orchestrator.errors import OrchestratorError, TransientBackendError

log = logging.getLogger("orchestrator.operator")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_identity() -> str:
    """``POD_NAME`` (the Deployment sets it from the downward API), else host name plus a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def default_namespace() -> str | None:
    """``POD_NAMESPACE``, else the pod's service-account namespace; None outside a pod."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def micro_time(seconds: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeadershipLost(OrchestratorError):
    """The leader could not renew its Lease in time: it stops (the pod restarts and stands by)."""


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str = "orchestrator-operator"
    identity: str = field(default_factory=default_identity)
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")


class LeaderElector:
    """One candidate's view of the Lease; :meth:`try_acquire_or_renew` is one round."""

    def __init__(self, api: KubeApi, config: ElectionConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.api, self.config = api, config
        self._clock, self._wall = clock, wall
        self._seen: tuple[Any, ...] | None = None  # the Lease record last observed
        self._seen_at = 0.0  # when it last changed, on our clock
        self.renewed_at: float | None = None  # when we last held it, on our clock

    @property
    def identity(self) -> str:
        return self.config.identity

    def _spec(self, now: float, previous: dict[str, Any]) -> dict[str, Any]:
        mine = previous.get("holderIdentity") == self.identity
        transitions = int(previous.get("leaseTransitions") or 0) + (0 if mine or not previous else 1)
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.config.lease_duration_s)),
                "acquireTime": previous.get("acquireTime") if mine else micro_time(now),
                "renewTime": micro_time(now), "leaseTransitions": transitions}

    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """Take or keep the Lease; True when we hold it now. With ``timeout``, the Lease calls
        together get at most that many seconds (each call's request timeout is what is left)."""
        c = self.config
        started, now = self._clock(), self._wall()  # before any request: a renewal counts from here

        def left() -> float:
            if timeout is None:
                return REQUEST_TIMEOUT
            remaining = min(REQUEST_TIMEOUT, started + timeout - self._clock())
            if remaining <= 0:
                raise TransientBackendError(f"Lease {c.namespace}/{c.name}: no time left in this round "
                                            f"({timeout:.1f}s)")
            return remaining

        lease = self.api.get_lease(c.namespace, c.name, timeout=left())
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": c.name, "namespace": c.namespace}, "spec": self._spec(now, {})}
            return self._won(self.api.create_lease(body, timeout=left()), started)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), spec.get("leaseDurationSeconds"))
        if record != self._seen:
            self._seen, self._seen_at = record, self._clock()
        duration = float(spec.get("leaseDurationSeconds") or c.lease_duration_s)
        if holder and holder != self.identity and self._clock() - self._seen_at < duration:
            return False  # another replica holds it and renews it
        body = {**lease, "spec": self._spec(now, spec)}  # metadata.resourceVersion guards the write
        return self._won(self.api.replace_lease(body, timeout=left()), started)

    def _won(self, lease: dict[str, Any] | None, started: float) -> bool:
        if lease is None:
            return False  # another replica wrote first
        spec = lease.get("spec") or {}
        self._seen = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"),
                      spec.get("leaseDurationSeconds"))
        self._seen_at = self._clock()
        # held from when the request was sent, not when the answer came: any other replica saw the
        # Lease change after that, so our renew deadline ends before its lease duration does
        self.renewed_at = started if self.renewed_at is None else max(self.renewed_at, started)
        return True

    def release(self) -> bool:
        """Give the Lease up at a clean stop (the standby takes it at its next try); True if released."""
        c = self.config
        lease = self.api.get_lease(c.namespace, c.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return False
        spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                "renewTime": micro_time(self._wall())}
        return self.api.replace_lease({**lease, "spec": spec}) is not None

    def time_left(self) -> float:
        """Seconds until the renew deadline of our last renewal (0 if we never held the Lease)."""
        if self.renewed_at is None:
            return 0.0
        return self.renewed_at + self.config.renew_deadline_s - self._clock()

    def overdue(self) -> bool:
        """We held the Lease but have not renewed it within the renew deadline."""
        return self.time_left() <= 0


class _Rounds:
    """Runs :meth:`LeaderElector.try_acquire_or_renew` in a thread, waiting at most a given time;
    a round that outlives its wait is left to finish (a thread cannot be cancelled), and no new
    round starts while it hangs."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector
        self._pending: asyncio.Future[bool] | None = None

    async def attempt(self, budget: float) -> bool:
        if budget <= 0:
            return False
        if self._pending is not None and not self._pending.done():
            log.warning("leader election: the previous round's Lease call has not returned")
            return False
        pending = asyncio.ensure_future(asyncio.to_thread(self.elector.try_acquire_or_renew, budget))
        pending.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: logged below
        self._pending = pending
        try:
            return await asyncio.wait_for(asyncio.shield(pending), budget)
        except TimeoutError:
            log.warning("leader election: the Lease calls took over %.1fs", budget)
            return False
        except OrchestratorError as exc:  # the API is away: we do not hold it (a leader retries until overdue)
            log.warning("leader election: %s", exc.render())
            return False


async def _standby_health(endpoint: str | None) -> Any:
    """While standing by, answer the liveness endpoint kopf serves once leading (the probes)."""
    if not endpoint:
        return None
    import aiohttp.web

    url = urlsplit(endpoint)

    async def healthz(_: Any) -> Any:
        return aiohttp.web.json_response({"leader": False})

    app = aiohttp.web.Application()
    app.router.add_get(url.path or "/", healthz)
    runner = aiohttp.web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, url.hostname, url.port, reuse_address=True).start()
    return runner


def _set(flag: Any) -> bool:
    return flag is not None and flag.is_set()


async def run_elected(run: Callable[[threading.Event], Any], elector: LeaderElector, *,
                      liveness_endpoint: str | None = None, stop_flag: threading.Event | None = None,
                      standby_flag: threading.Event | None = None,
                      leading_flag: threading.Event | None = None) -> None:
    """Stand by until this replica holds the Lease, then ``await run(kopf_stop)`` (the operator)
    while renewing it; ``kopf_stop`` is set when ``stop_flag`` is, or when leadership is lost
    (then :class:`LeadershipLost` is raised once the operator stopped). The caller may
    :meth:`LeaderElector.release` the Lease after a clean stop."""
    c = elector.config
    health = await _standby_health(liveness_endpoint)
    rounds = _Rounds(elector)
    try:
        while not _set(stop_flag):
            if await rounds.attempt(c.renew_deadline_s):
                break
            if standby_flag is not None and not standby_flag.is_set():
                log.info("standing by: Lease %s/%s is held by another replica", c.namespace, c.name)
                standby_flag.set()
            await _sleep(c.retry_period_s, stop_flag)
        else:
            return
    finally:
        if health is not None:
            await health.cleanup()
    log.info("leading as %s (Lease %s/%s)", c.identity, c.namespace, c.name)
    if leading_flag is not None:
        leading_flag.set()
    kopf_stop = threading.Event()
    lost = False

    def lose() -> None:
        nonlocal lost
        if not kopf_stop.is_set():
            lost = True
            log.error("lost the Lease %s/%s: stopping", c.namespace, c.name)
            kopf_stop.set()

    async def renew() -> None:
        while not _set(stop_flag) and not kopf_stop.is_set():
            await _sleep(c.retry_period_s, stop_flag, kopf_stop)
            if _set(stop_flag) or kopf_stop.is_set():
                break
            if not await rounds.attempt(elector.time_left()) and elector.overdue():
                lose()
        kopf_stop.set()

    async def watchdog() -> None:
        """Stop kopf the moment the renew deadline passes, whatever a renewal is waiting on."""
        while not kopf_stop.is_set():
            if elector.overdue():
                lose()
                return
            await asyncio.sleep(min(0.05, max(0.001, elector.time_left())))

    renewer, guard = asyncio.create_task(renew()), asyncio.create_task(watchdog())
    try:
        await run(kopf_stop)
    finally:
        kopf_stop.set()
        renewer.cancel()
        guard.cancel()
        if leading_flag is not None:
            leading_flag.clear()
    if lost:
        raise LeadershipLost(f"{c.identity} could not renew the Lease {c.namespace}/{c.name} in "
                             f"{c.renew_deadline_s:.0f}s and stopped", fix="it restarts and stands by")


async def _sleep(seconds: float, *flags: threading.Event | None) -> None:
    """Sleep, waking early when one of ``flags`` is set."""
    deadline = time.monotonic() + seconds
    while not any(_set(f) for f in flags) and (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.1))
