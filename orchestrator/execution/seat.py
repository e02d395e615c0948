"""A driver's seat in its queue: wait there (saying why), report in while running, leave at the end.

:class:`QueueSeat` wraps an :class:`~orchestrator.execution.admission.AdmissionQueue` (this
machine's or a Ray cluster's) with what the job driver does around it: the job's record says
``pending`` with the reason while it waits and ``running`` once admitted, the terminal UI hears
each reason, and a report that answers :class:`~orchestrator.execution.admission.Preempted`
becomes a stop reason for the run's state machine.
"""

from __future__ import annotations

import logging

from orchestrator import events as ev
from orchestrator.execution.admission import AdmissionQueue, Admitted, Preempted, Waiting
from orchestrator.execution.handler import EventHandler
from orchestrator.execution.states import RunMachine
from orchestrator.store import JobState, JobStore

log = logging.getLogger("orchestrator.driver")


class QueueSeat:
    """One job's place in one queue, for the whole run (requeues included)."""

    def __init__(self, queue: AdmissionQueue, store: JobStore, job_id: str, machine: RunMachine,
                 events: EventHandler | None = None) -> None:
        self.queue = queue
        self.store = store
        self.job_id = job_id
        self.machine = machine
        self.events = events

    def wait(self) -> bool:
        """Wait until the scheduler places the whole gang (the run is then starting); False if
        the job was cancelled while it waited."""

        def waiting(decision: Waiting) -> None:
            reason = decision.reason
            log.info("queued: %s", reason)
            self.store.transition(self.job_id, JobState.PENDING, {JobState.RUNNING, JobState.PENDING},
                                  message=f"queued: {reason}")
            if self.events:
                self.events.on_event(ev.Queued(reason=reason))

        def should_stop() -> bool:
            return bool(self.machine.stop_reason) or self.store.get(self.job_id).state == JobState.CANCELLING

        if not isinstance(self.queue.wait(should_stop, waiting), Admitted):
            return False
        self.store.transition(self.job_id, JobState.RUNNING, {JobState.RUNNING, JobState.PENDING}, message=None)
        log.info("admitted by the cluster's queue")
        self.machine.admitted()
        return True

    def report_in(self) -> str | None:
        """Report to the queue; the stop reason to request when it preempts this job, else None."""
        try:
            answer = self.queue.report()
        except Exception as exc:  # noqa: BLE001 - a queue hiccup must not fail a healthy job
            log.warning("could not report to the queue (%s); training goes on", exc)
            return None
        return self.machine.preempt(answer.by) if isinstance(answer, Preempted) else None

    def requeued(self) -> None:
        """The job stopped for a preemption and waits again."""
        self.queue.requeued()

    def leave(self) -> None:
        """The job ended: its resources are free for the next job in the queue."""
        self.queue.leave()
