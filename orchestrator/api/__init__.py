"""The supported API for your own training function (``entrypoint: path/to/file.py:train``).

orchestrator calls ``train(config)`` on every worker with the resolved job spec as a dict. These
functions connect it to the job: the prepared data, this worker's shard, metrics and stop requests.
The framework helpers (DDP or MultiWorkerMirroredStrategy, checkpoints that resume exactly, export)
live in :mod:`orchestrator.api.torch` and :mod:`orchestrator.api.tensorflow`::

    from orchestrator import api
    from orchestrator.api import torch as helpers

    def train(config):
        data = api.get_data()
        for epoch in range(1, config["training"]["epochs"] + 1):
            for batch in ...(api.shard(epoch)):
                ...
            api.report(epoch=epoch, train_loss=...)
            if api.should_stop():
                return

Everything named in ``__all__`` here and in the two framework modules is kept compatible; the
modules under ``orchestrator.runtime`` are the implementation and may change. Importing this module
loads neither torch nor tensorflow.
"""

from __future__ import annotations

from orchestrator.runtime.data import PreparedData
from orchestrator.runtime.loop_common import RestorePoint
from orchestrator.runtime.session import get_data, get_session, report, shard, should_stop

__all__ = [
    "PreparedData",
    "RestorePoint",
    "get_data",
    "rank",
    "report",
    "shard",
    "should_stop",
    "world_size",
]


def world_size() -> int:
    """How many workers train this job (split the global batch size by it)."""
    return get_session().world_size


def rank() -> int:
    """This worker's rank, 0 to ``world_size() - 1``; rank 0's reports and exports are the job's."""
    return get_session().rank
