"""PyTorch helpers for a training function of a ``framework: torch`` job (see :mod:`orchestrator.api`).

- :func:`prepare_model`: move a model to this worker's device and wrap it for DDP with the spec's
  ``sync`` settings (bucket size, gradient compression);
- :func:`restore_checkpoint` / :func:`save_checkpoint`: call both on every rank; the checkpoint is
  written atomically and checksummed, holds every rank's random state, and a restore returns the
  :class:`~orchestrator.api.RestorePoint` to continue from (epoch 1, step 0 on a fresh start);
- :func:`evaluate_split`: loss and accuracy of a split across all ranks (a collective);
- :func:`export_model`: rank 0 saves the state_dict and a TorchScript model in the job's model folder;
- :func:`worker_device`: the device this worker trains on.
"""

from __future__ import annotations

from orchestrator.runtime.torch_ddp import (
    evaluate_split,
    export_model,
    prepare_model,
    restore_checkpoint,
    save_checkpoint,
    worker_device,
)

__all__ = ["evaluate_split", "export_model", "prepare_model", "restore_checkpoint", "save_checkpoint", "worker_device"]
