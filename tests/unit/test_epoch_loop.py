"""The one epoch loop (``run_epochs``) with a framework-free adapter: the order of a run, mid-epoch
stops and checkpoints, and a resume that finishes the epoch as the uninterrupted run did."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from orchestrator.metrics import names
from orchestrator.runtime.epoch_loop import GanAdapter, ModelSummary, SupervisedAdapter, run_epochs
from orchestrator.runtime.loop_common import RestorePoint
from orchestrator.runtime.session import IndexFeed
from orchestrator.spec.models import JobSpec

SHARD = 50  # samples per epoch on the one rank: 13 steps of 4 (the last one of 2)


class FakeSession:
    """The calls the loop makes on a session, recorded in order; asked to stop after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.data = SimpleNamespace(task="classification")
        self.calls: list[tuple[Any, ...]] = []
        self.stop_after, self.global_step = stop_after, 0

    def model_built(self, **summary: Any) -> None:
        self.calls.append(("model_built", summary["parameters"] > 0))

    def epoch_feed(self, epoch: int) -> IndexFeed:
        return IndexFeed(self.shard(epoch))

    def shard(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(epoch).permutation(SHARD)

    def epoch_started(self, epoch: int, global_step: int) -> None:
        self.calls.append(("epoch_started", epoch, global_step))

    def progress(self, *, epoch: int, step: int, steps: int, loss: float, global_step: int) -> None:
        self.global_step = global_step

    def should_stop(self) -> bool:
        return self.stop_after is not None and self.global_step >= self.stop_after

    def record_shard(self, epoch: int, indices: np.ndarray) -> None:
        self.calls.append(("record_shard", epoch, len(indices)))

    def report(self, *, epoch: int, global_step: int, **metrics: float) -> None:
        kept = {k: v for k, v in metrics.items() if "seconds" not in k and k != names.SAMPLES_PER_SECOND}
        self.calls.append(("report", epoch, global_step, kept))

    def stopped(self, epoch: int, global_step: int) -> None:
        self.calls.append(("stopped", epoch, global_step))

    def finished(self, metrics: dict[str, float], param_checksum: str) -> None:
        self.calls.append(("finished", metrics, param_checksum))


class MemoryState:
    """Checkpoints kept in a list: (epoch, step, step_in_epoch, extra) and the weight after the step."""

    def __init__(self, saved: list[dict[str, Any]]) -> None:
        self.saved = saved
        self.weight = 0.0

    def restore(self) -> RestorePoint:
        if not self.saved:
            return RestorePoint()
        last = self.saved[-1]
        self.weight = last["weight"]
        return RestorePoint.from_saved(last)

    def summary(self) -> ModelSummary:
        return ModelSummary(parameters=1, param_checksum=repr(self.weight), optimizer_checksum="-", device="cpu",
                            sync_backend="none")

    def all_reduce(self, counts: list[float]) -> list[float]:
        return list(counts)  # one rank

    def save(self, *, epoch: int, step: int, step_in_epoch: int = 0, extra: dict[str, Any] | None = None) -> float:
        self.saved.append({"epoch": epoch, "global_step": step, "step_in_epoch": step_in_epoch,
                           "extra": {k: v for k, v in (extra or {}).items() if k != "seconds"}, "weight": self.weight})
        return 0.0


class Arithmetic:
    """A "model" whose loss depends on the samples and on every step before (as real training does)."""

    state: MemoryState

    def __init__(self, sess: Any, spec: JobSpec, saved: list[dict[str, Any]]) -> None:
        super().__init__(sess, spec)  # type: ignore[call-arg]
        self.state = MemoryState(saved)

    def step(self, epoch: int, step: int, sel: np.ndarray) -> tuple[float, float, float]:
        self.state.weight = self.state.weight * 0.9 + float(sel.sum()) / 100
        loss = 1.0 / (1.0 + self.state.weight)
        return loss, loss * len(sel), float(len(sel) // 2)

    def evaluate(self, epoch: int, totals: Any) -> tuple[float, ...]:
        return 1.0 / (1.0 + self.state.weight), 0.5

    def finish(self) -> tuple[dict[str, float], str | None]:
        return {"test_loss": 1.0 / (1.0 + self.state.weight)}, repr(self.state.weight)


class Supervised(Arithmetic, SupervisedAdapter):
    """The arithmetic as a classifier."""

    def learning_rate(self) -> float:
        return 0.1


class Gan(Arithmetic, GanAdapter):
    """The same arithmetic with the gan's rules: no mid-epoch stops, one-sample batches dropped."""

    def evaluate(self, epoch: int, totals: Any) -> tuple[float, ...]:
        return GanAdapter.evaluate(self, epoch, totals)


def spec_of(model: str = "cnn", every_steps: int | None = None) -> JobSpec:
    return JobSpec.model_validate({
        "name": "loop", "model": {"type": model}, "resources": {"workers": 1},
        "training": {"epochs": 2, "batch_size": 4}, "checkpoint": {"every_steps": every_steps},
        "data": {"preprocessing": "normalize" if model == "gan" else "standardize"},
    })


def run(spec: JobSpec, saved: list[dict[str, Any]], stop_after: int | None = None,
        adapter: type[Arithmetic] = Supervised) -> tuple[dict[str, float], FakeSession]:
    sess = FakeSession(stop_after)
    return run_epochs(sess, spec, adapter(sess, spec, saved)), sess  # type: ignore[arg-type]


def test_a_run_goes_epoch_by_epoch_and_checkpoints_each() -> None:
    saved: list[dict[str, Any]] = []
    final, sess = run(spec_of(), saved)
    assert [c[:3] for c in sess.calls] == [
        ("model_built", True), ("epoch_started", 1, 0), ("record_shard", 1, 50), ("report", 1, 13),
        ("epoch_started", 2, 13), ("record_shard", 2, 50), ("report", 2, 26), ("finished", final, repr(saved[-1]["weight"])),
    ]
    assert [(s["epoch"], s["global_step"], s["step_in_epoch"]) for s in saved] == [(1, 13, 0), (2, 26, 0)]
    report = sess.calls[3][3]
    assert report[names.TRAIN_ACCURACY] == pytest.approx(25 / 50)  # 12 batches of 4 give 2, the last (of 2) gives 1
    assert report[names.VAL_ACCURACY] == 0.5 and report[names.LEARNING_RATE] == 0.1


@pytest.mark.parametrize("every_steps", [None, 7])
def test_a_mid_epoch_stop_resumes_to_the_uninterrupted_numbers(every_steps: int | None) -> None:
    spec = spec_of(every_steps=every_steps)
    straight, whole = run(spec, [])
    saved: list[dict[str, Any]] = []
    stopped, first = run(spec, saved, stop_after=20)  # checked every 10 steps of an epoch: epoch 2's 10th
    assert stopped == {}
    assert first.calls[-2:] == [("record_shard", 2, 10 * 4), ("stopped", 2, 23)]
    assert (saved[-1]["epoch"], saved[-1]["global_step"], saved[-1]["step_in_epoch"]) == (2, 23, 10)
    assert saved[-1]["extra"]["seen"] == 40  # the epoch's sums so far travel with the checkpoint
    resumed, second = run(spec, saved)
    assert resumed == straight
    assert ("record_shard", 2, SHARD - 40) in second.calls  # only the rest of epoch 2
    assert [c for c in second.calls if c[0] == "report"] == [c for c in whole.calls if c[0] == "report" and c[1] == 2]


def test_a_gan_takes_a_stop_at_the_epochs_end_with_a_checkpoint() -> None:
    saved: list[dict[str, Any]] = []
    final, sess = run(spec_of("gan", every_steps=5), saved, stop_after=3, adapter=Gan)
    assert final == {}
    assert [(s["epoch"], s["global_step"], s["step_in_epoch"]) for s in saved] == [(1, 13, 0)]  # no step checkpoints
    assert [c[0] for c in sess.calls] == ["model_built", "epoch_started", "record_shard", "report", "stopped"]


def test_a_gan_drops_a_one_sample_last_batch() -> None:
    spec = spec_of("gan")
    sess = FakeSession()
    adapter = Gan(sess, spec, [])  # type: ignore[arg-type]
    assert (adapter.steps(49), adapter.steps(50), adapter.steps(1)) == (12, 13, 1)
