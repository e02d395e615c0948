"""The function every Ray Train worker runs: build the session, then train.

It validates the spec, fetches the prepared data from the object store, makes the
:class:`TrainSession` current (so user code can call the session helpers), forwards the
worker's output to the job log, and reports an exception to the driver (with its traceback)
before Ray Train sees it.
"""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.events import Memory, WorkerError
from orchestrator.runtime import session as session_mod
from orchestrator.runtime.checkpoints import disk_full_error
from orchestrator.runtime.data import PreparedData
from orchestrator.runtime.session import Collectives, JobPaths, LocalCollectives, TrainSession
from orchestrator.spec.models import JobSpec


def load_user_function(entrypoint: str) -> Callable[[dict[str, Any]], Any]:
    """Import ``path/to/file.py:function`` by path (no package or sys.path needed)."""
    file_part, func_name = entrypoint.rsplit(":", 1)
    module_name = "orchestrator_user_" + Path(file_part).stem
    if not Path(file_part).is_absolute() and not Path(file_part).exists():
        # shipped in Ray's runtime environment (the ray backend's working_dir, the project folder or
        # package root; the path is relative to it, e.g. mypkg/train.py): Ray puts that folder
        # on every worker's sys.path, while Ray Train moves the worker's cwd to its run folder
        import sys

        found = next((Path(p) / file_part for p in sys.path if p and (Path(p) / file_part).is_file()), None)
        file_part = str(found) if found is not None else file_part
    spec = importlib.util.spec_from_file_location(module_name, file_part)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file_part}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise AttributeError(f"{file_part} has no function {func_name!r}")
    return func  # type: ignore[no-any-return]


def job_spec_of(config: dict[str, Any]) -> JobSpec:
    """The typed spec the driver put in the trainer's config (validated where the job was loaded)."""
    spec = config["spec"]
    if not isinstance(spec, JobSpec):
        raise TypeError(f"the trainer's config must carry a JobSpec, not {type(spec).__name__}")
    return spec


def torch_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function for torch jobs."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    run_torch_worker(config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def run_torch_worker(config: dict[str, Any], rank: int, world: int, dev: Any) -> None:
    """One torch worker's job, in a process group already set up (by Ray Train, or by a warm
    cluster's long-lived workers: :mod:`orchestrator.runtime.warm`)."""
    from orchestrator.runtime.torch_ddp import TorchCollectives
    from orchestrator.runtime.torch_loop import train_builtin

    spec = job_spec_of(config)
    collectives: Collectives = TorchCollectives(dev) if world > 1 else LocalCollectives(dev)
    sess = _make_session(config, spec, rank, world, collectives)
    _run(sess, spec, config, lambda: train_builtin(sess, spec, dev))


def tf_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function for tensorflow jobs (MultiWorkerMirroredStrategy).

    The strategy is built first (TensorFlow needs it before any other op), from the TF_CONFIG
    Ray Train wrote; user entrypoints get it from :func:`orchestrator.runtime.tf_multiworker.strategy`.
    """
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import ray.train

    from orchestrator.runtime.tf_loop import train_builtin_tf
    from orchestrator.runtime.tf_multiworker import TFCollectives, make_strategy

    spec = job_spec_of(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = make_strategy(spec, world)
    sess = _make_session(config, spec, rank, world, TFCollectives(strategy, rank, world))
    _run(sess, spec, config, lambda: train_builtin_tf(sess, spec, strategy))


def _make_session(
    config: dict[str, Any], spec: JobSpec, rank: int, world: int, collectives: Collectives
) -> TrainSession:
    import ray

    data = config.get("data")
    if data is not None and not isinstance(data, PreparedData):
        data = ray.get(data)
    if data is not None and data.stream is not None:
        from orchestrator.runtime.datasets import warm_read_workers

        warm_read_workers()
    return TrainSession(
        spec=spec,
        rank=rank,
        world_size=world,
        paths=JobPaths.from_config(config["paths"]),
        data=data,
        sink=config.get("sink"),
        collectives=collectives,
        keep_checkpoints=spec.checkpoint.keep,
    )


def _run(sess: TrainSession, spec: JobSpec, config: dict[str, Any], builtin: Callable[[], Any]) -> None:
    session_mod.set_session(sess)
    try:
        with session_mod.captured_output(sess):
            if spec.entrypoint:
                load_user_function(spec.entrypoint)(dict(sess.config))  # user code gets plain data
            else:
                builtin()
    except BaseException as exc:
        # a full disk does not go away when Ray Train restarts the workers: the driver fails the job
        # at once instead of spending failure.max_failures on it
        sess.emit(WorkerError(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                              permanent=disk_full_error(exc) is not None), wait=True)
        raise
    finally:
        _report_peak_memory(sess)
        sess.close()
        session_mod.set_session(None)


def _report_peak_memory(sess: TrainSession) -> None:
    """This worker process's peak resident memory, for the job's result (``orchestrator compare``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    sess.emit(Memory(peak_rss_bytes=peak if sys.platform == "darwin" else peak * 1024), wait=True)
