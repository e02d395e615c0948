"""Ray Tune schedulers that stop a trial's workers the moment the scheduler decides to stop it.

Tune stops a trial by calling the trainable's ``stop`` once the actor is free, which is after its
current ``step`` -- the next epoch -- returns. With fast epochs a stopped trial would train one or
two more. :class:`PromptASHAScheduler` tells the trial's workers through the trial's sink actor
(found by name) as soon as ASHA says STOP, so they checkpoint and stop within a few steps.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


class PromptASHAScheduler(ASHAScheduler):  # type: ignore[misc]
    """ASHA, plus an immediate stop request to the trial's workers on STOP."""

    def __init__(self, sweep_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep_id = sweep_id

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        from orchestrator.sweep.trial import request_trial_stop

        action: str = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("epoch", 0) < self._max_t:
            request_trial_stop(self.sweep_id, trial.trial_id, "stopped early by ASHA")
        return action
