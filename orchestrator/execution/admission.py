"""The admission protocol: how a driver waits in a queue, reports in, and leaves.

Two queues implement it: :class:`orchestrator.execution.queue.MachineAdmission` (this machine,
the job store is the queue) and :class:`orchestrator.execution.queue.Admission` (a Ray cluster's
queue actor). Both answer with decision objects, never strings: a waiting job can always say why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Admitted:
    """The scheduler placed the whole gang: start now."""


@dataclass(frozen=True)
class Waiting:
    """Not yet: why, in words (``permanent``: the gang can never fit there)."""

    reasons: tuple[str, ...]
    permanent: bool = False

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class Withdrawn:
    """The job left the queue before it was placed (cancelled while queued)."""


@dataclass(frozen=True)
class Continue:
    """A running job keeps running."""


@dataclass(frozen=True)
class Preempted:
    """A running job must give way: checkpoint, stop, and queue again."""

    by: str


#: What asking to start answers; what waiting ends with; what reporting in answers.
Offer = Admitted | Waiting
WaitOutcome = Admitted | Withdrawn
Report = Continue | Preempted


def decision_of(answer: dict[str, Any]) -> Offer | Report:
    """A queue's wire answer (``{"action": ...}``, what the queue actor returns) as a decision."""
    action = answer["action"]
    if action == "run":
        return Admitted()
    if action == "wait":
        return Waiting((str(answer["reason"]),), bool(answer.get("permanent")))
    if action == "preempt":
        return Preempted(answer.get("by") or "a job of higher priority")
    if action == "continue":
        return Continue()
    raise ValueError(f"unknown queue answer {answer!r}")


class AdmissionQueue(Protocol):
    """A driver's side of a queue: wait for a place, report in while running, leave at the end."""

    def wait(self, should_stop: Callable[[], bool], on_wait: Callable[[Waiting], None]) -> WaitOutcome:
        """Block until the gang is placed (:class:`Admitted`) or ``should_stop()`` (:class:`Withdrawn`),
        telling ``on_wait`` each new reason to wait."""
        ...

    def report(self) -> Report:
        """A running job reports in; the answer says go on or give way."""
        ...

    def requeued(self) -> None:
        """After a preemption: the job stopped and waits again."""
        ...

    def leave(self) -> None:
        """The job ended: its resources are free for the next job."""
        ...
