"""The model zoo's new example jobs through `orchestrator submit` on real Ray (2 DDP workers, the
embedded Ray that submit starts itself): text classification with an embedding, and the DCGAN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.integration.conftest import cli_env, last_json, run_cli

pytestmark = pytest.mark.integration


@pytest.mark.heavy
def test_the_embedding_lstm_classifies_token_sequences_with_ddp_and_predicts_from_raw_ids(tmp_path: Path) -> None:
    from orchestrator.runtime.tokens import token_sequences

    env = cli_env(tmp_path / "home", ray_address=None)
    result = last_json(run_cli(["submit", str(REPO / "jobs" / "rnn-tokens.yaml"), "-o", "json", "-q"], env,
                               check=True).stdout)
    metrics = result["metrics"]
    assert result["state"] == "succeeded" and metrics["epochs"] == 8
    assert metrics["val_accuracy"] >= 0.90 and metrics["test_accuracy"] >= 0.90, metrics  # chance 0.25, words 0.5
    ids, labels = token_sequences()
    np.savez(tmp_path / "ids.npz", x=ids[:100])  # integer ids, as a user has them
    proc = run_cli(["predict", result["job_id"], "--input", str(tmp_path / "ids.npz"), "-o", "json"], env, check=True)
    predictions = np.array(json.loads(proc.stdout.strip().splitlines()[-1])["predictions"])
    assert float(np.mean(predictions == labels[:100])) >= 0.85


@pytest.mark.heavy
def test_the_dcgan_trains_with_ddp_draws_its_grid_and_exports_an_image_generator(tmp_path: Path) -> None:
    import torch

    env = cli_env(tmp_path / "home", ray_address=None)
    result = last_json(run_cli(["submit", str(REPO / "jobs" / "dcgan.yaml"), "--set", "training.epochs=6",
                                "--set", "checkpoint.every_epochs=3", "-o", "json", "-q"], env, check=True).stdout)
    metrics = result["metrics"]
    assert result["state"] == "succeeded" and metrics["epochs"] == 6, result
    assert np.isfinite([metrics["generator_loss"], metrics["discriminator_loss"]]).all()
    assert metrics["confident_real"] >= 0.9 and 0.0 <= metrics["confident_samples"] <= 1.0
    pngs = sorted(Path(result["samples_dir"]).glob("epoch-*.png"))
    assert len(pngs) == 6 and pngs[-1].read_bytes()[:4] == b"\x89PNG"
    generator = torch.jit.load(result["generator_path"])
    drawn = generator(torch.randn(8, 32)).detach().numpy()
    assert drawn.shape == (8, 1, 8, 8) and drawn.min() >= -1e-4 and drawn.max() <= 16 + 1e-4
    assert drawn.max() > 4  # raw units (0-16), not the generator's [0, 1]
