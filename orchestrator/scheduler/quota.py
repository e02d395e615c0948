"""Quotas per queue and accelerator type, with borrowing and lending inside a cohort.

Semantics (close to Kueue's ClusterQueue/cohort model, simplified):

* A queue with no ``quotas`` is unlimited. Otherwise it owns ``nominal`` units of each listed
  type (0 of any type it does not list).
* Within nominal, a job is always admissible quota-wise. Above it, the queue borrows from its
  cohort: at most ``borrowing_limit`` above nominal, and only while the cohort as a whole fits:
  ``sum over members of max(usage, guaranteed) <= sum of nominal``, where ``guaranteed`` is the
  part of a member's nominal it does not lend (``nominal - lending_limit``).
* Borrowed room is given back by preemption when its owner needs it (reclaim, see preemption.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.scheduler.cluster import ClusterSpec, fmt_amount

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class QuotaVerdict:
    """Whether a queue may take ``amount`` more of a resource, and why not."""

    ok: bool
    borrowing: bool = False
    reason: str | None = None


ADMIT = QuotaVerdict(True)
ADMIT_BORROWING = QuotaVerdict(True, borrowing=True)


class QuotaBook:
    """Usage per (queue, resource), checked against the cluster's quotas."""

    __slots__ = ("cluster", "usage", "limited")

    def __init__(self, cluster: ClusterSpec, usage: dict[tuple[str, str], float] | None = None) -> None:
        self.cluster = cluster
        self.usage: dict[tuple[str, str], float] = usage if usage is not None else {}
        # Fast path: with no quota anywhere (a plain cluster, a trace partition) checks are free.
        self.limited = cluster.has_quotas

    def copy(self) -> QuotaBook:
        other = QuotaBook.__new__(QuotaBook)  # not __init__: ``limited`` is known already
        other.cluster, other.usage, other.limited = self.cluster, dict(self.usage), self.limited
        return other

    def used(self, queue: str, resource: str) -> float:
        return self.usage.get((queue, resource), 0.0)

    def add(self, queue: str, resource: str, amount: float) -> None:
        key = (queue, resource)
        self.usage[key] = self.usage.get(key, 0.0) + amount

    def is_borrowing(self, queue: str, resource: str) -> bool:
        """True when the queue uses more than its nominal quota of ``resource``."""
        quota = self.cluster.queue_by_name[queue].quota(resource)
        return quota is not None and self.used(queue, resource) > quota.nominal + EPS

    def within_nominal(self, queue: str, resource: str, amount: float) -> bool:
        quota = self.cluster.queue_by_name[queue].quota(resource)
        return quota is None or self.used(queue, resource) + amount <= quota.nominal + EPS

    def check(self, queue: str, resource: str, amount: float) -> QuotaVerdict:
        """May ``queue`` take ``amount`` more of ``resource`` now?"""
        if not self.limited:
            return ADMIT
        spec = self.cluster.queue_by_name[queue]
        quota = spec.quota(resource)
        if quota is None:
            return ADMIT
        used = self.used(queue, resource)
        wanted = used + amount
        if wanted <= quota.nominal + EPS:
            return ADMIT
        head = f"queue {queue} is at its {resource} quota (nominal {fmt_amount(quota.nominal)}, in use {fmt_amount(used)})"
        if spec.cohort is None:
            return QuotaVerdict(False, reason=head + " and has no cohort to borrow from")
        if quota.borrowing_limit is not None and wanted - quota.nominal > quota.borrowing_limit + EPS:
            return QuotaVerdict(
                False, reason=head + f" and may borrow at most {fmt_amount(quota.borrowing_limit)}"
            )
        total, demand = 0.0, 0.0
        for member in self.cluster.cohort_members(spec.cohort):
            q = member.quota(resource)
            if q is None:
                continue
            use = wanted if member.name == queue else self.used(member.name, resource)
            total += q.nominal
            demand += max(use, q.guaranteed)
        if demand > total + EPS:
            free = max(0.0, total - (demand - amount))
            return QuotaVerdict(False, reason=head + f"; cohort {spec.cohort} has {fmt_amount(free)} to lend")
        return ADMIT_BORROWING
