"""`orchestrator predict`: a saved model's predictions equal the in-process model's (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from orchestrator.runtime.data import prepare_data
from orchestrator.runtime.torch_ddp import build_model, export_torch_model
from orchestrator.spec.models import JobSpec
from orchestrator.store import JobRecord, JobState, JobStore

REPO = Path(__file__).resolve().parents[2]


def saved_job(home: Path, model: dict[str, Any], data: dict[str, Any] | None = None) -> tuple[str, Any, Any]:
    """A succeeded job in the store whose model was exported as training exports it."""
    spec = JobSpec.model_validate({"name": "saved", "model": model, "data": data or {}})
    prepared = prepare_data(spec.data, 0)
    torch.manual_seed(0)
    net = build_model(spec, prepared).eval()
    model_dir = home / "jobs" / "saved-1" / "model"
    export_torch_model(net, prepared, spec, model_dir)
    JobStore(home / "jobs.db").create(JobRecord(
        id="saved-1", name="saved", backend="local", state=JobState.SUCCEEDED, spec=spec.model_dump(mode="json"),
        job_dir=home / "jobs" / "saved-1", created_at=time.time(),
        result={"torchscript_path": str(model_dir / "model.torchscript.pt")}))
    return "saved-1", net, prepared


def predict_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "orchestrator", "predict", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_predictions_equal_the_in_process_model_on_raw_inputs(tmp_path: Path) -> None:
    job, net, data = saved_job(tmp_path, {"type": "cnn", "conv_filters": [8], "dense_units": [16]})
    from sklearn.datasets import load_digits

    raw = load_digits().images[:50].astype(np.float32)  # (50, 8, 8): raw pixels, as a user has them
    np.savez(tmp_path / "x.npz", x=raw)
    proc = predict_cli(tmp_path, job, "--input", str(tmp_path / "x.npz"), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        logits = net(torch.from_numpy(data.preprocessor.apply(raw[:, None])))
    probs = torch.softmax(logits, 1)
    assert out["samples"] == 50 and out["task"] == "classification"
    assert out["predictions"] == logits.argmax(1).tolist()
    assert np.allclose(out["probability"], probs.max(1).values.numpy(), atol=1e-5)
    text = predict_cli(tmp_path, job, "--input", str(tmp_path / "x.npz"))
    assert text.returncode == 0 and "30 more" in text.stdout


def test_regression_predictions_are_values(tmp_path: Path) -> None:
    job, net, data = saved_job(tmp_path, {"type": "rnn", "cell": "gru", "hidden": 8}, {"source": "sine"})
    from orchestrator.runtime.data import sine_windows

    raw = sine_windows()[0][:20]
    np.savez(tmp_path / "s.npz", x=raw)
    proc = predict_cli(tmp_path, job, "--input", str(tmp_path / "s.npz"), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = net(torch.from_numpy(data.preprocessor.apply(raw)))[:, 0].numpy()
    assert out["task"] == "regression" and np.allclose(out["predictions"], expected, atol=1e-5)


@pytest.mark.parametrize(("content", "words"), [
    ({"y": np.zeros(3)}, "has no array named x"),
    ({"x": np.zeros((3, 5))}, "the model takes (1, 8, 8)"),
    (None, "cannot read"),
])
def test_bad_input_files_are_clear_errors(tmp_path: Path, content: dict[str, Any] | None, words: str) -> None:
    job, _, _ = saved_job(tmp_path, {"type": "cnn", "conv_filters": [4], "dense_units": []})
    path = tmp_path / "in.npz"
    if content is None:
        path.write_text("not an npz")
    else:
        np.savez(path, **content)
    proc = predict_cli(tmp_path, job, "--input", str(path))
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_job_without_a_saved_model_says_so(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.create(JobRecord(id="failed-1", name="failed", backend="local", state=JobState.FAILED,
                           spec={"name": "failed"}, job_dir=tmp_path / "jobs" / "failed-1", created_at=time.time()))
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 8, 8)))
    proc = predict_cli(tmp_path, "failed-1", "--input", str(tmp_path / "x.npz"))
    assert proc.returncode == 2 and "has no saved model (failed)" in proc.stderr


def test_a_plain_npy_array_and_an_empty_x_are_clear_errors(tmp_path: Path) -> None:
    job, _, _ = saved_job(tmp_path, {"type": "cnn", "conv_filters": [4], "dense_units": []})
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    proc = predict_cli(tmp_path, job, "--input", str(tmp_path / "x.npy"))
    assert proc.returncode == 2 and "single array, not an .npz" in proc.stderr, proc.stderr
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8)))
    proc = predict_cli(tmp_path, job, "--input", str(tmp_path / "empty.npz"))
    assert proc.returncode == 2 and "holds no samples" in proc.stderr, proc.stderr


def test_a_gan_job_points_to_its_generator(tmp_path: Path) -> None:
    JobStore(tmp_path / "jobs.db").create(JobRecord(
        id="gan-1", name="gan", backend="local", state=JobState.SUCCEEDED, spec={"name": "gan"},
        job_dir=tmp_path / "jobs" / "gan-1", created_at=time.time(),
        result={"generator_path": "/x/generator.torchscript.pt"}))
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 8, 8)))
    proc = predict_cli(tmp_path, "gan-1", "--input", str(tmp_path / "x.npz"))
    assert proc.returncode == 2 and "trained a gan" in proc.stderr and "torch.jit.load" in proc.stderr
