"""The job queue of one Ray cluster: the scheduler decides which job starts, not a race for CPUs.

Without it, two jobs submitted to one cluster each grab what Ray gives them, and two gangs that
each hold half the workers deadlock. With it, every job's driver joins the cluster, offers its
gang to the queue and starts training only when the scheduler places the whole gang there; a
running job reports in every few seconds and is told when a higher-priority job preempts it (it
then checkpoints, stops, and offers itself again; see ``Driver``).

The queue lives in a detached, named Ray actor (``orchestrator-queue`` in namespace
``orchestrator``), so it outlives every CLI and driver. It keeps no state that matters: each
driver repeats its whole request (gang, queue, priority, when it was queued, when it started) on
every call, so a restarted queue actor rebuilds the queue from the drivers' next calls, in the
same order, without losing a job. A driver that stops calling (killed) is dropped after
``STALE_S``.

:class:`QueueBook` is the pure part (no Ray import): a scheduler pass over the cluster's nodes and
the jobs' requests, rebuilt at every call from those facts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.execution.admission import (
    Admitted,
    Continue,
    Offer,
    Preempted,
    Report,
    Waiting,
    WaitOutcome,
    Withdrawn,
    decision_of,
)
from orchestrator.scheduler import ClusterState, ManualClock, Place, Preempt, Scheduler
from orchestrator.scheduler.cluster import ClusterSpec, cluster_from_data
from orchestrator.scheduler.jobs import GangRequest
from orchestrator.scheduler.placement import find_placement
from orchestrator.scheduler.state import FINISHED_KEPT, PREEMPTIONS_KEPT
from orchestrator.scheduler.view import QueueRow, queue_rows

log = logging.getLogger(__name__)

QUEUE_ACTOR = "orchestrator-queue"
NAMESPACE = "orchestrator"
#: A job whose driver has not called for this long is gone (killed, or its machine lost).
STALE_S = 60.0
#: How often a waiting driver asks again, and a running one reports in.
POLL_S = 2.0
#: A new (or restarted) queue admits nothing this long, so running jobs can report in first.
REJOIN_S = 3 * POLL_S


@dataclasses.dataclass
class Entry:
    """What a driver tells the queue about its job, on every call."""

    job_id: str
    request: GangRequest
    queued_at: float
    state: str = "waiting"  # waiting | running | preempting
    started_at: float | None = None
    last_seen: float = 0.0
    preempted_by: str | None = None
    waiting_for: tuple[str, ...] = ()  # jobs it preempted, still stopping
    # Its history, carried into every rebuilt scheduler state so the default policy's guards and
    # bands see it: service of its earlier runs (accelerator-seconds) and its latest preemptions.
    attained: float = 0.0
    preempted_at: tuple[float, ...] = ()
    reported: bool = False  # its driver said it runs (a place another job's pass gave it may be unheard)


def preempted_again(times: Iterable[float], now: float) -> tuple[float, ...]:
    """A job's preemption times with one more at ``now`` (the latest few, as the state keeps)."""
    return (*tuple(times)[-(PREEMPTIONS_KEPT - 1) :], now)


def request_to_json(request: GangRequest) -> dict[str, Any]:
    data = dataclasses.asdict(request)
    data["tolerations"] = [dataclasses.asdict(t) for t in request.tolerations]
    return data


def request_from_json(data: dict[str, Any]) -> GangRequest:
    from orchestrator.scheduler.jobs import Toleration

    fields = dict(data)
    fields["accelerators"] = tuple(fields.get("accelerators") or ())
    fields["tolerations"] = tuple(Toleration(**t) for t in fields.get("tolerations") or ())
    fields["node_selector"] = tuple(tuple(p) for p in fields.get("node_selector") or ())
    return GangRequest(**fields)


def cluster_from_nodes(nodes: Sequence[dict[str, Any]], queues: Sequence[str] = ()) -> ClusterSpec:
    """The scheduler's model of a Ray cluster (alive nodes of ``ray.nodes()``): one pool per kind of
    node, not per node.

    CPU-only nodes form one pool; GPU nodes one pool per ``accelerator_type:...`` Ray found on them
    (``nvidia-gpu`` where it found none), TPU hosts one per TPU type. Nodes of one kind that differ
    in CPUs, memory, GPU count or custom resources (Ray's ``memory`` differs from node to node even
    on identical machines) stay in one pool, each node with its own size (``node_sizes``), so a gang
    spans them with each worker on a node that holds it, as Ray itself places a gang. A node with
    neither CPUs nor accelerators (a head started with ``--num-cpus 0``) holds no worker and is
    left out. Every queue the jobs name exists, without quota.
    """
    kinds: dict[tuple[str, str | None], list[tuple[float, int, float]]] = {}
    for node in nodes:
        if not node.get("Alive", node.get("alive", True)):
            continue
        res = node.get("Resources") or node.get("resources") or {}
        ray_kind = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None)
        cpus, memory = float(res.get("CPU", 0)), int(res.get("memory", 0))
        gpus, tpus = float(res.get("GPU", 0)), float(res.get("TPU", 0))
        # pools are named after Ray's own accelerator_type (A100 -> nvidia-a100); requests are
        # translated the same way (ray_request) rather than guessing a card's memory size here
        key: tuple[str, str | None]
        if gpus:
            key, accelerators = ("gpu", queue_accelerator(ray_kind or "GPU")), gpus
        elif tpus:
            key, accelerators = ("tpu", queue_accelerator(ray_kind or "TPU-SLICE")), tpus
        elif cpus:
            key, accelerators = ("cpu", None), 0.0
        else:
            continue
        kinds.setdefault(key, []).append((cpus, memory, accelerators))
    pools = [_pool_of(kind, accelerator, sizes) for (kind, accelerator), sizes in sorted(kinds.items(), key=str)]
    if not pools:  # no node alive: a cluster nothing fits, so every job waits and says why
        pools.append({"name": "ray-cpu", "nodes": 0, "cpus_per_node": 1, "accelerator": "cpu"})
    names = sorted(set(queues) | {"default"})
    return cluster_from_data({"name": "ray", "pools": pools, "queues": [{"name": q} for q in names]})


def _pool_of(kind: str, accelerator: str | None, sizes: list[tuple[float, int, float]]) -> dict[str, Any]:
    """One pool of a Ray cluster: its nodes' largest sizes, and each node's own where they differ."""
    # largest first, so the pool is the same whatever order Ray lists its nodes in
    sizes = sorted(sizes, key=lambda s: (s[2], s[0], s[1]), reverse=True)
    name = "ray-" + (accelerator or "cpu")
    pool: dict[str, Any] = {"name": name[:63].rstrip("-"), "nodes": len(sizes),
                            "cpus_per_node": max(cpus for cpus, _, _ in sizes) or None}
    # a node that reports no memory resource: memory is not a constraint in its pool
    tracks_memory = all(memory > 0 for _, memory, _ in sizes)
    if tracks_memory:
        pool["memory_per_node"] = max(memory for _, memory, _ in sizes)
    if kind == "cpu":
        pool["accelerator"] = "cpu"
    else:
        pool.update({"accelerator": accelerator, "accelerators_per_node": max(a for _, _, a in sizes)})
    if len(set(sizes)) > 1:
        pool["node_sizes"] = [
            {**({"cpus": cpus} if pool["cpus_per_node"] else {}), **({"memory": memory} if tracks_memory else {}),
             **({"accelerators": accelerators} if kind != "cpu" else {})}
            for cpus, memory, accelerators in sizes
        ]
    return pool


def queue_accelerator(ray_kind: str) -> str:
    """Ray's accelerator_type (``A100``, ``TPU-V5LITEPOD``) as a scheduler type (``nvidia-a100``, ``tpu-v5litepod``)."""
    if ray_kind.upper().startswith("TPU-"):
        return "tpu-" + ray_kind[4:].lower()
    return "nvidia-" + ray_kind.lower()


def ray_request(request: GangRequest) -> GangRequest:
    """A job's gang in the names a Ray cluster's nodes use (``nvidia-a100-40gb`` is ``A100``).

    A TPU slice's layout is left to Ray (it reserves whole slices itself), so no topology here.
    """
    from orchestrator.execution.ray_local import ray_accelerator_name

    return dataclasses.replace(request, accelerators=tuple(dict.fromkeys(
        queue_accelerator(ray_accelerator_name(a)) for a in request.accelerators)), topology=None)


class QueueBook:
    """The queue's logic: requests in, a decision per job out. Rebuilt from the entries each call.

    What the rebuilt state cannot see for itself is kept here: each entry's earlier service and
    preemption times, and the service of the jobs that finished lately (``finished``), from which
    the default policy draws its bands.
    """

    def __init__(self, policy: str = "default", clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self.entries: dict[str, Entry] = {}
        self.nodes: list[dict[str, Any]] = []
        self.finished: deque[float] = deque(maxlen=FINISHED_KEPT)
        self.created_at = clock()

    # -- what drivers call ------------------------------------------------------------------
    def offer(self, job_id: str, request: GangRequest, queued_at: float, *, running: bool = False,
              started_at: float | None = None) -> dict[str, Any]:
        """A waiting job asks to start (``running`` False) or a running one reports in.

        Returns ``{"action": "run"}`` (start now), ``{"action": "wait", "reason": ...}``,
        ``{"action": "continue"}`` (keep running) or ``{"action": "preempt", "by": ...}``.
        """
        now = self.clock()
        entry = self.entries.get(job_id)
        if entry is None:
            entry = Entry(job_id, request, queued_at)
            self.entries[job_id] = entry
            if running:  # a queue restarted under a running job: take it back as it is
                entry.state, entry.started_at = "running", started_at or now
        entry.request, entry.queued_at, entry.last_seen = request, queued_at, now
        if running and entry.state == "waiting":
            entry.state, entry.started_at = "running", started_at or now
        entry.reported = entry.reported or running
        if not running and entry.state in ("running", "preempting"):
            if entry.reported:  # it ran and stopped: the run's service counts
                entry.attained += self._run_service(entry, now)
            entry.reported = False
            entry.state, entry.started_at, entry.preempted_by = "waiting", None, None  # it stopped
        self._drop_stale(now)
        if running:
            if entry.state == "preempting":
                return {"action": "preempt", "by": entry.preempted_by}
            return {"action": "continue"}
        if now - self.created_at < REJOIN_S:  # after a restart, running jobs report in first
            return {"action": "wait", "reason": "the queue (re)started; waiting for running jobs to report in",
                    "permanent": False}
        scheduler, state, result = self._pass(now)
        if entry.state == "running":
            return {"action": "run"}
        if entry.waiting_for:
            return {"action": "wait", "permanent": False,
                    "reason": f"preempting {', '.join(entry.waiting_for)}: waiting for them to checkpoint and stop"}
        wait = result.waits.get(job_id) if result is not None else None
        reason = wait.message if wait is not None else scheduler.explain(state, job_id).message  # type: ignore[union-attr]
        return {"action": "wait", "reason": reason or "waiting for the scheduler", "permanent": bool(
            wait is not None and wait.permanent)}

    def done(self, job_id: str) -> None:
        """The job ended (or its driver is leaving): its resources are free, and its service
        joins the sample of finished jobs if it ran."""
        entry = self.entries.pop(job_id, None)
        if entry is not None and entry.state != "waiting":
            self.finished.append(entry.attained + self._run_service(entry, self.clock()))

    @staticmethod
    def _run_service(entry: Entry, now: float) -> float:
        return entry.request.size * max(0.0, now - (entry.started_at or now))

    def rows(self) -> list[QueueRow]:
        """The queue as people read it (``orchestrator queue``)."""
        now = self.clock()
        self._drop_stale(now)
        scheduler, state, _ = self._build(now)
        rows = queue_rows(scheduler, state)
        rows += [
            QueueRow(e.job_id, e.request.queue, state.jobs[e.job_id].priority, "running", e.request.describe(),
                     now - (e.started_at or now), "running; not counted: it does not fit beside the others")
            for e in self.entries.values() if e.job_id in state.jobs and e.job_id not in state.running
            and e.state != "waiting"
        ]
        preempting = {e.job_id: e.preempted_by for e in self.entries.values() if e.state == "preempting"}
        return [
            dataclasses.replace(r, detail=f"{r.detail}; being preempted by {preempting[r.job_id]}")
            if r.job_id in preempting else r
            for r in rows
        ]

    # -- the pass -----------------------------------------------------------------------------
    def _drop_stale(self, now: float) -> None:
        for job_id in [j for j, e in self.entries.items() if now - e.last_seen > STALE_S]:
            log.warning("queue: job %s stopped reporting; dropped", job_id)
            del self.entries[job_id]

    def _build(self, now: float) -> tuple[Scheduler, ClusterState, ClusterSpec]:
        cluster = cluster_from_nodes(self.nodes, [e.request.queue for e in self.entries.values()])
        scheduler = Scheduler(cluster, self.policy, ManualClock(now))
        state = ClusterState(cluster)
        state.remember_finished(self.finished)
        entries = sorted(self.entries.values(), key=lambda e: (e.queued_at, e.job_id))
        for entry in entries:
            job = state.submit(entry.job_id, entry.request, entry.queued_at, submit_time=entry.queued_at)
            job.queued_since = entry.queued_at
            job.attained = entry.attained
            job.preempted_at = entry.preempted_at[-PREEMPTIONS_KEPT:]
            job.preemptions = len(entry.preempted_at)
        # jobs being preempted are leaving: the jobs that preempt them get their room first
        for entry in sorted(entries, key=lambda e: (e.state == "preempting", e.started_at or 0.0)):
            if entry.state == "waiting":
                continue
            job = state.jobs[entry.job_id]
            options = scheduler.eligibility(entry.request).options
            placement = next(
                (p for o in options
                 if (p := find_placement(state.capacity.pools[o.pool.name], entry.request, o.resource)) is not None),
                None,
            )
            if placement is not None:
                state.start(job, placement, entry.started_at or now)
            else:  # it runs beyond what the model holds (rare, see REJOIN_S): not counted, not queued
                state.finish(entry.job_id, now)
        return scheduler, state, cluster

    def _pass(self, now: float) -> tuple[Scheduler, ClusterState, Any]:
        """One scheduling pass; its placements and preemptions are committed to the entries."""
        scheduler, state, _ = self._build(now)
        result = scheduler.schedule(state, explain=True)
        for decision in result.decisions:
            if isinstance(decision, Preempt):
                victim = self.entries.get(decision.job_id)
                if victim is not None and victim.state == "running":
                    victim.state, victim.preempted_by = "preempting", decision.by
                    victim.preempted_at = preempted_again(victim.preempted_at, now)
                    log.info("queue: preempting %s for %s (%s)", decision.job_id, decision.by, decision.cause)
            elif isinstance(decision, Place):
                entry = self.entries[decision.job_id]
                leaving = [j for j in decision.preempts if j in self.entries and self.entries[j].state != "waiting"]
                if leaving:  # its room is still held: it starts once they have checkpointed and stopped
                    entry.waiting_for = tuple(leaving)
                    continue
                entry.state, entry.started_at, entry.waiting_for = "running", now, ()
                log.info("queue: starting %s on %s", decision.job_id, decision.placement.describe())
        return scheduler, state, result


class QueueActor:
    """The Ray actor around a :class:`QueueBook`; it reads the cluster's nodes at every call."""

    def __init__(self, policy: str = "default") -> None:
        self.book = QueueBook(policy)

    def _refresh(self) -> None:
        import ray

        self.book.nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]

    def offer(self, job_id: str, request: dict[str, Any], queued_at: float, running: bool = False,
              started_at: float | None = None) -> dict[str, Any]:
        self._refresh()
        return self.book.offer(job_id, request_from_json(request), queued_at, running=running,
                               started_at=started_at)

    def done(self, job_id: str) -> None:
        self.book.done(job_id)

    def rows(self) -> list[dict[str, Any]]:
        self._refresh()
        return [r.to_json() for r in self.book.rows()]


def queue_actor() -> Any:
    """The cluster's queue actor, created on first use (the caller is connected to Ray)."""
    import ray

    cls = ray.remote(num_cpus=0, max_restarts=-1)(QueueActor)
    return cls.options(name=QUEUE_ACTOR, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


def wait_for_place(ask: Callable[[], Offer], should_stop: Callable[[], bool],
                   on_wait: Callable[[Waiting], None]) -> WaitOutcome:
    """The waiting loop of both queues: ``ask()`` every ``POLL_S`` until it answers
    :class:`Admitted` or ``should_stop()`` (:class:`Withdrawn`), telling ``on_wait`` each new reason."""
    last = None
    while not should_stop():
        answer = ask()
        if isinstance(answer, Admitted):
            return answer
        if answer.reasons != last:
            last = answer.reasons
            on_wait(answer)
        time.sleep(POLL_S)
    return Withdrawn()


def _offer(answer: dict[str, Any]) -> Offer:
    decision = decision_of(answer)
    assert isinstance(decision, Admitted | Waiting), answer  # the queue answers an offer so
    return decision


def _report(answer: dict[str, Any]) -> Report:
    decision = decision_of(answer)
    assert isinstance(decision, Continue | Preempted), answer  # the queue answers a report so
    return decision


def machine_request(request: GangRequest) -> GangRequest:
    """A gang on this machine: its GPUs are whatever type they are, so no type preference."""
    return dataclasses.replace(request, accelerators=())


class Admission:
    """A driver's side of the queue: wait for a place, report in while running, leave when done."""

    def __init__(self, job_id: str, request: GangRequest, queued_at: float) -> None:
        self.job_id = job_id
        self.request = ray_request(request)
        self.queued_at = queued_at
        self.started_at: float | None = None
        self._actor: Any = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        for attempt in range(3):
            if self._actor is None:
                self._actor = queue_actor()
            try:
                return ray.get(getattr(self._actor, method).remote(*args, **kwargs), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if attempt == 2:
                    raise
                from orchestrator.execution.ray_local import ray_head_gone

                address = ray.get_runtime_context().gcs_address
                if address and ray_head_gone(address):
                    # the queue lived on the head: looking it up again would wait for Ray's GCS
                    # reconnect timeout, after which Ray ends this process
                    raise
                self._actor = None  # killed or restarting: get (or create) it again
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def wait(self, should_stop: Callable[[], bool], on_wait: Callable[[Waiting], None]) -> WaitOutcome:
        """Block until the scheduler places the job (:class:`Admitted`) or ``should_stop()``."""

        def ask() -> Offer:
            answer = _offer(self._call("offer", self.job_id, request_to_json(self.request), self.queued_at))
            if isinstance(answer, Waiting) and answer.permanent:
                from orchestrator.errors import BackendError

                raise BackendError(f"the job can never start on this cluster: {answer.reason}",
                                   fix="ask for resources the cluster's nodes have (see `orchestrator queue`)")
            return answer

        outcome = wait_for_place(ask, should_stop, on_wait)
        if isinstance(outcome, Admitted):
            self.started_at = time.time()
        return outcome

    def report(self) -> Report:
        """A running job reports in; the answer says to go on or to give way (:class:`Preempted`)."""
        return _report(self._call("offer", self.job_id, request_to_json(self.request), self.queued_at, True,
                                  self.started_at))

    def requeued(self) -> None:
        """After a preemption: nothing to clear (the actor moved the job back to waiting)."""

    def leave(self) -> None:
        try:
            self._call("done", self.job_id)
        except Exception:  # noqa: BLE001 - the queue drops a silent job after STALE_S anyway
            log.warning("could not tell the queue that %s ended", self.job_id)


class MachineAdmission:
    """The local backend's queue when each job embeds its own Ray: the job store is the queue.

    The cluster is this machine (its CPUs, memory and GPUs, as Ray sees them when it starts
    embedded). Every active job in the store is an entry; a file lock makes one driver decide at a
    time. A preemption is written into the victim's record (``result.preempt_by``), which its
    driver reads when it reports in. Nothing runs besides the drivers, so nothing can be lost.

    A job's history lives in its record's ``result`` too: ``run_started_at`` (its current run),
    ``attained_s`` (accelerator-seconds of its earlier runs), ``preempted_at`` (its latest
    preemptions) and, once it ended, ``service_s``; the finished jobs' services are the sample
    the default policy draws its bands from.
    """

    def __init__(self, store: Any, job_id: str, request: GangRequest, queued_at: float,
                 node: dict[str, Any], policy: str = "default") -> None:
        self.store = store
        self.job_id = job_id
        self.request = machine_request(request)
        self.queued_at = queued_at
        self.node = node
        self.policy = policy
        self.lock_path = Path(store.db_path).with_suffix(".queue.lock")

    def _book(self) -> QueueBook:
        from orchestrator.scheduler import request_from_spec
        from orchestrator.store import JobState, process_alive

        book = QueueBook(self.policy)
        book.created_at -= REJOIN_S  # every running job is in the store: no need to wait for reports
        book.nodes = [self.node]
        now = book.clock()
        finished: list[float] = []
        for record in self.store.list(10_000):  # newest first
            if record.backend != "local":
                continue
            if record.state.terminal and isinstance(record.result.get("service_s"), int | float):
                finished.append(float(record.result["service_s"]))
            if record.id == self.job_id:
                continue
            if record.state not in (JobState.PENDING, JobState.RUNNING, JobState.CANCELLING):
                continue
            if record.driver_pid is None or not process_alive(record.driver_pid, record.driver_started):
                continue
            try:
                request = request_from_spec(record.job_spec)
            except Exception:  # noqa: BLE001 - an unreadable spec cannot be queued; it runs as it is
                continue
            entry = Entry(record.id, machine_request(request), record.created_at, last_seen=now,
                          attained=float(record.result.get("attained_s", 0.0)),
                          preempted_at=tuple(record.result.get("preempted_at", ())))
            if record.state is not JobState.PENDING:
                entry.state = "preempting" if record.result.get("preempt_by") else "running"
                entry.started_at = record.result.get("run_started_at") or record.started_at or now
                entry.preempted_by = record.result.get("preempt_by")
            book.entries[record.id] = entry
        book.finished.extend(reversed(finished[: FINISHED_KEPT]))  # oldest first, as a state keeps them
        mine = self.store.get(self.job_id)
        book.entries[self.job_id] = Entry(
            self.job_id, self.request, self.queued_at, last_seen=now,
            attained=float(mine.result.get("attained_s", 0.0)),
            preempted_at=tuple(mine.result.get("preempted_at", ())),
        )
        return book

    @contextlib.contextmanager
    def _locked(self) -> Any:
        import fcntl

        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def wait(self, should_stop: Callable[[], bool], on_wait: Callable[[Waiting], None]) -> WaitOutcome:
        """Block until this machine's queue places the job (:class:`Admitted`) or ``should_stop()``."""
        from orchestrator.store import JobState

        def ask() -> Offer:
            with self._locked():
                book = self._book()
                answer = book.offer(self.job_id, self.request, self.queued_at)
                for entry in book.entries.values():  # tell the jobs it preempts, through their records
                    if entry.state == "preempting" and entry.job_id != self.job_id:
                        record = self.store.get(entry.job_id)
                        if not record.result.get("preempt_by"):
                            self.store.update(entry.job_id, result={
                                **record.result, "preempt_by": entry.preempted_by,
                                "preempted_at": list(entry.preempted_at)})
                if answer["action"] == "run" or answer.get("permanent"):
                    # a gang that can never fit this machine goes on, to be refused with the reason
                    self.requeued()  # a preemption it was told of while it waited no longer applies
                    if answer["action"] == "run":  # its run's service counts from now
                        record = self.store.get(self.job_id)
                        self.store.update(self.job_id, result={**record.result, "run_started_at": time.time()})
                    # marked running before the lock is released, so no other driver counts it waiting
                    self.store.transition(self.job_id, JobState.RUNNING, {JobState.RUNNING, JobState.PENDING},
                                          message=None)
                    return Admitted()
                # marked waiting before the lock is released, so no other driver counts it running
                self.store.transition(self.job_id, JobState.PENDING, {JobState.RUNNING, JobState.PENDING},
                                      message=f"queued: {answer['reason']}")
                return _offer(answer)

        return wait_for_place(ask, should_stop, on_wait)

    def report(self) -> Report:
        """A preemption reaches a local job through its record (``result.preempt_by``)."""
        by = self.store.get(self.job_id).result.get("preempt_by")
        return Preempted(by) if by else Continue()

    def requeued(self) -> None:
        """It stopped (or never ran): the service of the run that ended, if any, is added to its
        earlier runs', and a preemption order no longer applies."""
        self._stopped(finished=False)

    def leave(self) -> None:
        """It ended: its whole service is recorded for the sample of finished jobs."""
        self._stopped(finished=True)

    def _stopped(self, *, finished: bool) -> None:
        result = dict(self.store.get(self.job_id).result)
        result.pop("preempt_by", None)
        started = result.pop("run_started_at", None)  # popped: a second call adds nothing
        attained = float(result.get("attained_s", 0.0))
        if isinstance(started, int | float):
            attained += self.request.size * max(0.0, time.time() - started)
            result["attained_s"] = attained
        if finished and isinstance(started, int | float):
            result["service_s"] = attained
        self.store.update(self.job_id, result=result)


def gpu_count() -> int:
    """GPUs on this machine by ``nvidia-smi -L`` (no CUDA library import), 0 without it."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def machine_node() -> dict[str, Any]:
    """This machine as a Ray node would describe it (what an embedded Ray instance gets)."""
    import os

    import psutil

    resources: dict[str, Any] = {"CPU": float(os.cpu_count() or 1), "memory": int(psutil.virtual_memory().total)}
    gpus = gpu_count()
    if gpus:
        resources["GPU"] = float(gpus)
    return {"Alive": True, "Resources": resources}


def queue_rows_of_cluster() -> list[dict[str, Any]]:
    """The rows of the queue of the cluster this process is connected to."""
    import ray

    return list(ray.get(queue_actor().rows.remote(), timeout=60))


def describe_wait(reason: str) -> str:
    return f"queued: {reason}"


__all__ = [
    "Admission",
    "Entry",
    "QueueActor",
    "QueueBook",
    "cluster_from_nodes",
    "queue_actor",
    "request_from_json",
    "request_to_json",
]
