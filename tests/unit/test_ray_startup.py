"""The slow-machine Ray start-up patch, on stand-ins for Ray's own functions (no Ray started)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.execution import ray_startup


def fake_start_raylet(
    redis_address: str,
    gcs_address: str,
    node_id: str,
    session_dir: str,
    metrics_agent_port: int | None = None,
    metrics_export_port: int | None = None,
    dashboard_agent_listen_port: int | None = None,
    runtime_env_agent_port: int | None = None,
    **rest: Any,
) -> dict[str, Any]:
    """The parameters ray._private.services.start_raylet reads for the agents' ports."""
    return {
        "metrics_agent_port": metrics_agent_port,
        "metrics_export_port": metrics_export_port,
        "dashboard_agent_listen_port": dashboard_agent_listen_port,
        "runtime_env_agent_port": runtime_env_agent_port,
        "rest": rest,
    }


def test_ports_are_chosen_passed_and_published_where_the_raylet_waits(tmp_path: Path) -> None:
    start = ray_startup._wrap_start_raylet(fake_start_raylet)
    node = "ab" * 28
    got = start(
        "",
        "127.0.0.1:6379",
        node,
        str(tmp_path),
        dashboard_agent_listen_port=52365,
        metrics_agent_port=0,
        object_store_memory=10,
    )
    assert got["dashboard_agent_listen_port"] == 52365  # a given port is kept
    assert got["rest"] == {"object_store_memory": 10}  # other arguments pass through
    for name in ray_startup.AGENT_PORTS:
        port = got[name]
        assert isinstance(port, int) and 0 < port < 65536, name
        published = tmp_path / f"{name}_{node}"
        assert published.read_text() == str(port)  # what the agent itself writes: the number only
    assert not list(tmp_path.glob("*.orchestrator-tmp"))
    chosen = [got[p] for p in ("metrics_agent_port", "metrics_export_port", "runtime_env_agent_port")]
    assert len(set(chosen)) == 3


def test_get_node_waits_past_rays_30_seconds_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def not_yet_then_found(gcs: str, node: str) -> dict[str, str]:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("node not found")
        return {"node_id": node}

    monkeypatch.setattr(ray_startup.time, "sleep", lambda s: None)
    assert ray_startup._wrap_get_node(not_yet_then_found)("g", "n") == {"node_id": "n"}
    assert len(calls) == 3

    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(ray_startup.time, "monotonic", lambda: float(next(clock)))

    def never(gcs: str, node: str) -> dict[str, str]:
        raise RuntimeError("node not found")

    with pytest.raises(RuntimeError, match="node not found"):
        ray_startup._wrap_get_node(never)("g", "n")


def test_joining_by_address_uses_the_local_token_only_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    from orchestrator.execution.ray_local import use_local_auth_token

    enabled: list[bool] = []
    fake = types.ModuleType("authentication_token_setup")

    def enable() -> None:  # what Ray's _enable_token_auth does, minus its C++ config reload
        enabled.append(True)
        monkeypatch.setenv("RAY_AUTH_MODE", "token")

    fake._enable_token_auth = enable  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray._private.authentication.authentication_token_setup", fake)
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)

    assert use_local_auth_token() is False  # no token anywhere: auth stays as Ray decides
    assert enabled == []

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 64)
    assert use_local_auth_token() is True
    assert enabled == [True]
    assert os.environ["RAY_AUTH_MODE"] == "token"

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's explicit choice wins
    assert use_local_auth_token() is False
    assert enabled == [True]


def test_worker_timeouts_are_raised_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_worker_register_timeout_seconds", raising=False)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "90")
    got = ray_startup.set_patient_environment()
    assert os.environ["RAY_worker_register_timeout_seconds"] == "600"  # Ray's default is 60
    assert got["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "90"  # the user's value is kept


@pytest.mark.parametrize(("ours", "rays"), [
    ("nvidia-h100-80gb", "H100"),            # Ray: "NVIDIA H100 80GB HBM3" -> H100
    ("nvidia-a100-40gb", "A100"),            # "NVIDIA A100-SXM4-40GB" -> A100
    ("nvidia-t4", "T4"),
    ("nvidia-l4", "L4"),
    ("nvidia-h200", "H200"),
    ("nvidia-rtx-pro-6000", "RTX-PRO-6000"),  # "NVIDIA RTX PRO 6000 Blackwell ..." -> RTX-PRO-6000
    ("tpu-v5-lite-podslice", "TPU-V5LITEPOD"),
    ("tpu-v5p-slice", "TPU-V5P"),
    ("tpu-v6e-slice", "TPU-V6E"),
    ("tpu-v4-podslice", "TPU-V4"),
])
def test_accelerator_names_match_what_ray_detects(ours: str, rays: str) -> None:
    from orchestrator.execution.ray_local import ray_accelerator_name

    assert ray_accelerator_name(ours) == rays


@pytest.mark.parametrize(("resources", "expected"), [
    # A TPU slice: TPU chips and use_tpu with the type and topology Ray needs; never GPUs.
    ({"workers": 4, "gpus_per_worker": 4, "accelerator": "tpu-v5p-slice", "topology": "2x2x4"},
     {"use_gpu": False, "use_tpu": True, "topology": "2x2x4", "accelerator_type": "TPU-V5P",
      "resources_per_worker": {"CPU": 1.0, "TPU": 4.0}}),
    ({"workers": 1, "gpus_per_worker": 8, "accelerator": "tpu-v5-lite-podslice"},
     {"use_gpu": False, "use_tpu": True, "topology": None, "accelerator_type": "TPU-V5LITEPOD",
      "resources_per_worker": {"CPU": 1.0, "TPU": 8.0}}),
    ({"workers": 2, "gpus_per_worker": 1, "accelerator": "nvidia-a100-40gb", "memory": "2Gi"},
     {"use_gpu": True, "use_tpu": False, "topology": None, "accelerator_type": "A100",
      "resources_per_worker": {"CPU": 1.0, "GPU": 1.0, "memory": float(2 * 2**30)}}),
    ({"workers": 2, "cpus_per_worker": 0.5},
     {"use_gpu": False, "use_tpu": False, "topology": None, "accelerator_type": None,
      "resources_per_worker": {"CPU": 0.5}}),
])
def test_ray_train_scaling_for_gpus_tpus_and_cpus(resources: dict[str, Any], expected: dict[str, Any]) -> None:
    from ray.train import ScalingConfig

    from orchestrator.execution.ray_local import scaling_arguments
    from orchestrator.spec.models import JobSpec

    spec = JobSpec.model_validate(
        {"name": "j", "model": {"type": "cnn"}, "resources": {"cpus_per_worker": 1, **resources}}
    )
    got = scaling_arguments(spec)
    assert {k: got[k] for k in expected} == expected
    assert got["num_workers"] == resources["workers"]
    config = ScalingConfig(**got)  # Ray's own checks (TPU: workers against the slice topology)
    assert config.use_tpu is expected["use_tpu"] and config.use_gpu is expected["use_gpu"]
    assert spec.sync_backend == ("nccl" if expected["use_gpu"] else "gloo")


def test_tpu_workers_that_do_not_fill_the_slice_are_a_clear_error() -> None:
    from orchestrator.errors import BackendError
    from orchestrator.execution.ray_local import build_trainer
    from orchestrator.spec.models import JobSpec

    spec = JobSpec.model_validate({
        "name": "j", "model": {"type": "cnn"},
        "resources": {"workers": 4, "gpus_per_worker": 4, "accelerator": "tpu-v5p-slice", "topology": "2x2x4"},
    })
    # `validate` refuses 2 workers on a 4-host slice (tests/k8s/test_tpu.py); Ray's own check stays
    # a clear error for a spec that got past it (copied without validation here)
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"workers": 2})})
    with pytest.raises(BackendError) as caught:
        build_trainer(spec, None, {}, None, None)  # type: ignore[arg-type]
    assert "must be a multiple of 4" in caught.value.message
    assert "one worker per TPU host" in (caught.value.fix or "")
