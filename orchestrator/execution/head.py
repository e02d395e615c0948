"""Watching the Ray head a driver is connected to: a lost head fails the job with the reason.

Ray itself ends a process whose GCS stays unreachable for 60 s, with no word of why; the driver
checks the head's GCS port once a second and, after ``HEAD_GONE_CHECKS`` misses in a row, fails
the job saying where its latest checkpoint is and how to resume.
"""

from __future__ import annotations

from orchestrator.execution.ray_local import ray_head_gone

#: How often the driver checks that the Ray head (its GCS) still listens, and how many checks in a
#: row must find it gone before the job fails (Ray itself would end this process after 60 s).
HEAD_CHECK_S = 1.0
HEAD_GONE_CHECKS = 2


class HeadWatch:
    """Counts consecutive checks that found the head gone (no address: nothing to watch)."""

    def __init__(self, gcs_address: str | None) -> None:
        self.gcs_address = gcs_address
        self._misses = 0

    def gone_now(self) -> bool:
        """One check, now: the head is unreachable (no history)."""
        return bool(self.gcs_address) and ray_head_gone(self.gcs_address or "")

    def lost(self) -> bool:
        """One more check; True once ``HEAD_GONE_CHECKS`` in a row found the head gone."""
        if not self.gcs_address:
            return False
        self._misses = self._misses + 1 if ray_head_gone(self.gcs_address) else 0
        return self._misses >= HEAD_GONE_CHECKS


def head_gone_message(gcs_address: str | None, job_id: str, checkpoint: str | None, own_ray: bool) -> str:
    """The failure text for a lost Ray head: what happened, the latest checkpoint, how to go on."""
    where = f"; latest checkpoint {checkpoint}" if checkpoint else "; no checkpoint was written yet"
    restart = "then" if own_ray else "start Ray again (`ray start --head ...`), then"
    return (
        f"the Ray head at {gcs_address} went away while the job ran (its GCS no longer accepts "
        f"connections: the head node died or Ray was stopped), and the workers with it{where}; "
        f"{restart} `orchestrator resume {job_id}` continues from the latest checkpoint"
    )
