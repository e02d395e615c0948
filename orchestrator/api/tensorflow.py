"""TensorFlow helpers for a training function of a ``framework: tensorflow`` job (see :mod:`orchestrator.api`).

- :func:`strategy`: this worker's MultiWorkerMirroredStrategy (one per process, already built):
  build the model and optimizer under ``strategy().scope()``;
- :func:`optimizer_variables`: the optimizer's variables for the model's, created now, so a
  checkpoint can hold them before the first step;
- :func:`use_variable_rng` and :func:`rng_variables`: call the first before building the model and
  pass the second's result to the checkpoint functions, so dropout's draws resume exactly too;
- :func:`restore_checkpoint` / :func:`save_checkpoint`: call both on every rank (reading variables
  is a collective); a restore returns the :class:`~orchestrator.api.RestorePoint` to continue from;
- :func:`evaluate_split`: loss and accuracy of a split across all ranks (call it on every rank);
- :func:`export_model`: ``model.keras`` and a SavedModel taking raw inputs (call it on every rank).

Importing this module sets ``TF_USE_LEGACY_KERAS=1``: ``tf.keras`` is Keras 2 (``tf_keras``).
"""

from __future__ import annotations

from orchestrator.runtime.tf_multiworker import (
    evaluate_split,
    export_model,
    optimizer_variables,
    restore_checkpoint,
    rng_variables,
    save_checkpoint,
    strategy,
    use_variable_rng,
)

__all__ = [
    "evaluate_split",
    "export_model",
    "optimizer_variables",
    "restore_checkpoint",
    "rng_variables",
    "save_checkpoint",
    "strategy",
    "use_variable_rng",
]
