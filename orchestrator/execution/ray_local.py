"""Ray-facing pieces of the driver: starting or joining Ray, fitting checks, the trainer.

Kept apart from :mod:`orchestrator.execution.driver` so the driver reads as job logic; these
functions are the only place that knows Ray Train's API.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from orchestrator.errors import BackendError
from orchestrator.execution.ray_startup import patient_start_up
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord

log = logging.getLogger("orchestrator.driver")


def dashboard_url(context: Any) -> str | None:
    """The Ray dashboard's page for this driver's Ray job (None when the dashboard is off)."""
    import ray

    url = getattr(context, "dashboard_url", None)
    if not url:
        return None
    base = url if url.startswith("http") else f"http://{url}"
    return f"{base}/#/jobs/{ray.get_runtime_context().get_job_id()}"


#: Token files already warned about in this process (the warning is said once).
_WARNED_TOKENS: set[str] = set()


def warn_if_token_readable(path: Path) -> bool:
    """Warn once, on stderr, when Ray's auth token file can be read by other users; True if it did.

    Whoever reads the token can submit jobs, that is run code, on the cluster. ``ray start``
    writes it with the process umask (often 0644).
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & 0o044 or str(path) in _WARNED_TOKENS:
        return False
    _WARNED_TOKENS.add(str(path))
    import stat
    import sys

    sys.stderr.write(
        f"warning: the Ray auth token {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
        f"whoever reads it can run code on your Ray cluster\n  fix: chmod 600 {path}\n"
    )
    return True


def local_auth_token_path() -> Path:
    """Where ``ray start`` keeps this user's Ray auth token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def use_local_auth_token() -> bool:
    """Turn on Ray's token auth for this process when a token is at hand; True if it did.

    ``ray start`` enables token auth and keeps the token in ``~/.ray/auth_token``; ``ray.init``
    uses it by itself only for a cluster it finds on its own, never for an explicit address such
    as ``RAY_ADDRESS`` (worker.py: "an explicit address never does"). Joining the cluster this
    machine started would then fail with "Authentication token is missing". An explicit
    ``RAY_AUTH_MODE`` is left alone.
    """
    path = local_auth_token_path()
    warn_if_token_readable(path)
    if "RAY_AUTH_MODE" in os.environ:
        return False
    if not (os.environ.get("RAY_AUTH_TOKEN") or path.is_file()):
        return False
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:  # another Ray version: the environment variable alone
        os.environ["RAY_AUTH_MODE"] = "token"
    else:
        _enable_token_auth()  # sets RAY_AUTH_MODE=token and re-reads Ray's config
    return True


#: How long an idle task worker process lives (Ray's default: 1 s once there are more workers than CPUs,
#: which a Train job always has). Streaming jobs start Ray Data read tasks every epoch; with the
#: default, each epoch forked and imported fresh worker processes (10-30 s an epoch on 2 CPUs).
IDLE_WORKER_KEEP_MS = 120_000

#: How often ray.init is tried when Ray's start-up fails (see start_embedded_ray).
RAY_START_ATTEMPTS = 3
#: Seconds the Ray dashboard may take to start (Ray's default is 60).
DASHBOARD_STARTUP_TIMEOUT_S = 600


def start_embedded_ray(join_address: str | None = None, metadata: dict[str, str] | None = None) -> Any:
    """``ray.init()`` for the local backend, retried when the node times out during start-up.

    With ``join_address`` (Ray's own ``RAY_ADDRESS`` convention) the driver joins that running
    Ray instance instead of starting one; tests use this to share one Ray across jobs.

    On a slow or contended machine Ray's start-up has fixed deadlines that can pass: the raylet
    waits 15 s for its dashboard agent to report its ports, ``ray.init`` waits 30 s for the node
    to register, the dashboard head must come up in time. Any of these makes ``ray.init`` raise;
    a second try, with the modules now in the page cache, usually succeeds.
    """
    import ray
    from ray._private import ray_constants
    from ray.job_config import JobConfig

    # Ray gives its dashboard 60 s to come up (RAY_DASHBOARD_STARTUP_TIMEOUT_S); a busy laptop
    # or CI machine can need longer. Ray reads the value at call time, so raise it here.
    ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S = max(ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S,
                                                        DASHBOARD_STARTUP_TIMEOUT_S)

    # The metadata shows in the Ray dashboard's job list and API, tying the Ray job to ours.
    common: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "namespace": "orchestrator",
        "job_config": JobConfig(metadata=metadata or {}),
    }
    patient_start_up()  # Ray's fixed start-up deadlines fail on a slow machine (see ray_startup)
    if join_address:
        use_local_auth_token()
        return ray.init(address=join_address, **common)
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        # The dashboard head adds ten Python processes to Ray's start-up; on a starved machine
        # they push the raylet's agents past their fixed deadlines. After a failed start, try
        # without the dashboard: the job runs, only the dashboard is missing (and logged).
        with_dashboard = attempt == 1
        try:
            # "local": a new instance even where a `ray start` cluster is recorded in
            # /tmp/ray/ray_current_cluster (plain ray.init() would join it, or hang on a dead one)
            context = ray.init(address="local", include_dashboard=with_dashboard, dashboard_host="127.0.0.1",
                               _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS},
                               **common)
            if not with_dashboard:
                log.warning("Ray started without its dashboard (the machine is too busy to start it in time)")
            return context
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions from its start-up
            if attempt == RAY_START_ATTEMPTS:
                raise BackendError(
                    f"the embedded Ray instance did not start: {exc}",
                    fix="check /tmp/ray/session_latest/logs/raylet.out; on a very busy machine try again",
                ) from None
            log.warning("Ray did not start (attempt %d of %d): %s; retrying%s", attempt, RAY_START_ATTEMPTS,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        " without the dashboard" if attempt == 1 else "")
            ray.shutdown()
    raise AssertionError("unreachable")


def gcs_address(context: Any) -> str | None:
    """``host:port`` of the Ray GCS (the head) a ``ray.init`` context is connected to, if known."""
    info = getattr(context, "address_info", None) or {}
    address = info.get("gcs_address") if isinstance(info, dict) else None
    return str(address) if address else None


def ray_head_gone(address: str, timeout: float = 2.0) -> bool:
    """True when nothing listens at the GCS ``host:port`` any more: the Ray head died or was stopped.

    A plain TCP connect, so it answers in milliseconds where a Ray call would wait for its GCS
    reconnect timeout (60 s, after which Ray ends the driver process itself). Only a refused or
    unreachable connection counts; a slow answer (a busy machine) is not taken for a dead head.
    """
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except OSError as exc:
        import errno

        return exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
    except ValueError:
        return False


def check_fits_local_cluster(spec: JobSpec, resources: dict[str, float]) -> None:
    """Refuse, with the numbers, a job this machine's Ray can never place (it would hang)."""
    r = spec.resources
    need_cpu = r.workers * r.cpus_per_worker
    have_cpu = resources.get("CPU", 0.0)
    reasons = []
    if need_cpu > have_cpu + 1e-9:
        reasons.append(f"needs {r.workers} x {r.cpus_per_worker:g} = {need_cpu:g} CPUs; this machine has {have_cpu:g}")
    kind = "TPU" if r.uses_tpu else "GPU"
    need_acc = r.workers * r.gpus_per_worker
    have_acc = resources.get(kind, 0.0)
    if need_acc > have_acc + 1e-9:
        reasons.append(f"needs {need_acc:g} {kind}s; this machine has {have_acc:g}")
    if r.memory_bytes and r.workers * r.memory_bytes > resources.get("memory", 0.0):
        reasons.append(
            f"needs {r.workers} x {r.memory_bytes / 2**30:.1f} GiB memory; Ray has "
            f"{resources.get('memory', 0.0) / 2**30:.1f} GiB"
        )
    if r.accelerator and r.gpus_per_worker > 0:
        key = f"accelerator_type:{ray_accelerator_name(r.accelerator)}"
        if key not in resources:
            reasons.append(f"needs accelerator {r.accelerator}; this machine has none")
    if reasons:
        raise BackendError(
            "the job does not fit this machine (local backend)",
            reasons=reasons,
            fix="lower resources.workers / cpus_per_worker (fractions such as 0.5 are fine), "
            "or submit to a cluster with --backend ray or kubernetes",
        )


#: GKE's TPU accelerator names to the TPU version Ray labels a node with (``TPU-<VERSION>``).
_TPU_VERSIONS = {
    "tpu-v4-podslice": "V4",
    "tpu-v5-lite-podslice": "V5LITEPOD",
    "tpu-v5-lite-device": "V5LITEPOD",
    "tpu-v5p-slice": "V5P",
    "tpu-v6e-slice": "V6E",
}


def ray_accelerator_name(accelerator: str) -> str:
    """Our accelerator names to the ``accelerator_type`` Ray detects on a node.

    Ray names an NVIDIA card by its model, without the memory size (``NVIDIA A100-SXM4-40GB``
    is ``A100``, ``NVIDIA RTX PRO 6000 ...`` is ``RTX-PRO-6000``), and a TPU by its version
    (``TPU-V5LITEPOD``, ``TPU-V5P``).
    """
    if accelerator in _TPU_VERSIONS:
        return "TPU-" + _TPU_VERSIONS[accelerator]
    parts = accelerator.split("-")
    if parts[0] == "nvidia" and len(parts) > 1:
        model = [p for p in parts[1:] if not re.fullmatch(r"\d+gb", p)]
        return "-".join(model).upper()
    if parts[0] == "tpu" and len(parts) > 1:
        return "TPU-" + parts[1].upper()
    return accelerator


def scaling_arguments(spec: JobSpec) -> dict[str, Any]:
    """Ray Train's ScalingConfig for a spec: GPUs (``use_gpu``) or a TPU slice (``use_tpu`` with
    its type and topology, which Ray needs to reserve a multi-host slice), or CPUs only."""
    r = spec.resources
    return {
        "num_workers": r.workers,
        "use_gpu": r.uses_gpu,
        "use_tpu": r.uses_tpu,
        "topology": r.topology if r.uses_tpu else None,
        "resources_per_worker": r.ray_resources_per_worker(),
        "accelerator_type": ray_accelerator_name(r.accelerator) if r.accelerator and r.gpus_per_worker else None,
        "placement_strategy": r.placement.upper(),
    }


def build_trainer(spec: JobSpec, record: JobRecord, paths: dict[str, Any], data_ref: Any, sink: Any, *,
                  warm: bool = False) -> Any:
    """The Ray Train trainer for a spec: TorchTrainer (DDP over gloo on CPU, nccl on GPU) or
    TensorflowTrainer (MultiWorkerMirroredStrategy), by ``spec.framework``; with ``warm``, the
    warm cluster's :class:`orchestrator.execution.warm_fit.WarmTrainer` (same workers' function)."""
    # the typed spec travels as it is (pickled): the workers validate nothing again
    config = {"spec": spec, "paths": paths, "data": data_ref, "sink": sink}
    if warm:
        from orchestrator.execution.warm_fit import WarmTrainer

        return WarmTrainer(spec, config, sink)
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    from orchestrator.runtime.progress import failure_reporter

    try:
        scaling = ScalingConfig(**scaling_arguments(spec))
    except ValueError as exc:  # Ray's own layout rules, e.g. TPU workers against the slice topology
        raise BackendError(
            f"Ray Train cannot lay out this job's workers: {exc}",
            fix="match resources.workers and gpus_per_worker (TPU chips per worker) to the slice: "
            "one worker per TPU host, e.g. 4 workers x 4 chips for a 2x2x4 v5p slice",
        ) from None
    storage = paths.get("storage")
    if storage is not None:  # Ray Train's own run state beside the job's outputs, in the same storage
        storage_path, filesystem = storage.child("ray").ray_storage()
        where: dict[str, Any] = {"storage_path": storage_path, "storage_filesystem": filesystem}
    else:
        where = {"storage_path": str(record.job_dir / "ray")}
    run_args: dict[str, Any] = {
        "name": record.id,
        **where,
        "failure_config": FailureConfig(max_failures=spec.failure.max_failures),
        "callbacks": [failure_reporter(sink)],
    }
    if spec.framework == "tensorflow":
        from ray.train.tensorflow import TensorflowTrainer

        from orchestrator.runtime.worker import tf_train_loop_per_worker

        # Keras 2 for tf.keras in the workers (MWMS fails in Keras 3's fit: keras-team/keras#20585)
        env = {"TF_USE_LEGACY_KERAS": "1"}
        return TensorflowTrainer(
            tf_train_loop_per_worker,
            train_loop_config=config,
            scaling_config=scaling,
            run_config=RunConfig(**run_args, worker_runtime_env={"env_vars": env}),  # type: ignore[call-arg]  # Train V2 RunConfig
        )
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.runtime.worker import torch_train_loop_per_worker

    return TorchTrainer(
        torch_train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend=spec.sync_backend),
        scaling_config=scaling,
        run_config=RunConfig(**run_args),
    )


def describe_training_error(exc: BaseException) -> str:
    """A one-paragraph reason from Ray Train's error (the worker's exception, not Ray's wrapping)."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray's message ends with the user exception's "Type: message" line; show that first.
    tail = [line for line in lines if not line.startswith(" ") and ":" in line]
    reason = tail[-1] if tail else (lines[-1] if lines else type(exc).__name__)
    return f"training failed: {reason} (full traceback in the job log: orchestrator logs JOB)"
