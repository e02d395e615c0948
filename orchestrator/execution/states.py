"""The state machine of one driver run: where a job is between its queue and its end.

::

    queued -> starting -> training -> stopping -> requeued -> queued ...
                    \\           \\          \\
                     +-----------+----------+--> done

(as Ray Train v2's controller keeps its run in one state object). Every change goes through
:meth:`RunMachine.to`, which refuses a transition the table does not hold, so the driver cannot
train a job it never admitted or requeue a job whose workers never stopped. The stop request
(why, since when) and the preemption that caused it live here too: one place, not five flags.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RunState(enum.Enum):
    """Where one driver run is."""

    QUEUED = "queued"  # waiting for its queue to place the whole gang
    STARTING = "starting"  # admitted: Ray and the trainer are being set up
    TRAINING = "training"  # the workers run
    STOPPING = "stopping"  # the workers were asked to checkpoint and stop (cancel or preemption)
    REQUEUED = "requeued"  # preempted: the workers stopped; the job goes back in the queue
    DONE = "done"  # the job reached its terminal state in the store


#: The legal transitions. Any state may end (an error, a cancel while queued), except an ended one.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.STARTING, RunState.DONE}),
    RunState.STARTING: frozenset({RunState.TRAINING, RunState.STOPPING, RunState.DONE}),
    RunState.TRAINING: frozenset({RunState.STOPPING, RunState.DONE}),
    RunState.STOPPING: frozenset({RunState.REQUEUED, RunState.DONE}),
    RunState.REQUEUED: frozenset({RunState.QUEUED, RunState.DONE}),
    RunState.DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition the table refuses: a bug in the driver, never a user's mistake."""

    def __init__(self, old: RunState, new: RunState) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing"
        super().__init__(f"a run cannot go from {old.value} to {new.value} (from {old.value}: {allowed})")
        self.old, self.new = old, new


class Next(enum.Enum):
    """What follows a finished ``trainer.fit()`` (:meth:`RunMachine.after_fit`)."""

    REQUEUE = "requeue"  # preempted and stopped: back in the queue
    CANCELLED = "cancelled"  # stopped on request: the job ends cancelled, resumable
    FAILED = "failed"  # the fit raised, nobody asked it to stop
    COMPLETED = "completed"  # the fit returned: succeeded (if it reported its final metrics)


@dataclass
class RunMachine:
    """The state of one driver run, changed only through its methods."""

    state: RunState = RunState.QUEUED
    #: Why the workers were asked to stop (``interrupt``, ``cancelled``, ``preempted by X``).
    stop_reason: str | None = None
    #: When they were asked (the driver stops Ray if they take too long).
    stop_requested_at: float | None = None
    #: The job that preempts this one, while it stops to give way.
    preempted_by: str | None = None
    history: list[RunState] = field(default_factory=list)

    def to(self, new: RunState) -> None:
        """Move to ``new``; :class:`IllegalTransition` if the table does not allow it."""
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, new)
        self.history.append(self.state)
        self.state = new

    @property
    def done(self) -> bool:
        return self.state is RunState.DONE

    def admitted(self) -> None:
        """The queue placed the gang: set up Ray and the trainer."""
        self.to(RunState.STARTING)

    def training(self) -> None:
        """The trainer starts; a run asked to stop while starting stays stopping (its workers are told at once)."""
        if self.state is not RunState.STOPPING:
            self.to(RunState.TRAINING)

    def request_stop(self, reason: str, now: float) -> bool:
        """Record a stop request; False if one is already recorded (the first reason wins).

        Queued, the request only marks the run (its queue wait ends); starting or training, the run
        goes to stopping.
        """
        if self.stop_reason is not None:
            return False
        self.stop_reason, self.stop_requested_at = reason, now
        if self.state in (RunState.STARTING, RunState.TRAINING):
            self.to(RunState.STOPPING)
        return True

    def preempt(self, by: str) -> str | None:
        """The queue asks this run to give way to ``by``: the stop reason to request (see
        :meth:`request_stop`), or None if the run is stopping anyway."""
        if self.stop_reason is not None:
            return None
        self.preempted_by = by
        return f"preempted by {by}"

    def after_fit(self, *, fit_failed: bool, workers_stopped: bool) -> Next:
        """What a finished fit means: the workers stopped for a preemption (or failed while
        stopping for one) requeue; otherwise a stop request makes it a cancel."""
        if self.preempted_by and (fit_failed or workers_stopped):
            return Next.REQUEUE
        if fit_failed:
            return Next.CANCELLED if self.stop_reason else Next.FAILED
        if self.stop_reason or workers_stopped:
            return Next.CANCELLED
        return Next.COMPLETED

    def requeue(self) -> None:
        """After a preemption: the workers stopped; forget the stop and wait in the queue again."""
        self.to(RunState.REQUEUED)
        self.preempted_by = self.stop_reason = self.stop_requested_at = None
        self.to(RunState.QUEUED)

    def finish(self) -> None:
        """The job reached its terminal state (a finish the frame repeats after an error is a no-op)."""
        if not self.done:
            self.to(RunState.DONE)
