"""Data preparation: cleaning, stratified splits, preprocessing, per-worker shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import SpecError
from orchestrator.runtime.data import (
    Preprocessor,
    clean,
    eval_indices,
    fit_preprocessor,
    prepare_data,
    shard_indices,
    stratified_split,
)
from orchestrator.spec.models import CleaningSpec, DataSpec


def test_clean_drops_invalid_and_duplicate_rows() -> None:
    x = np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 2.0], [3.0, np.inf], [4.0, 5.0], [1.0, 2.0]])
    y = np.array([0, 1, 0, 1, 1, 1])
    cx, cy, report = clean(x, y, CleaningSpec())
    assert report.dropped_invalid == 2
    assert report.dropped_duplicates == 1  # row 2 repeats row 0 with the same label
    assert report.rows_out == 3
    # the first occurrence is kept, order preserved; [1,2] with label 1 is not a duplicate
    assert cx.tolist() == [[1.0, 2.0], [4.0, 5.0], [1.0, 2.0]]
    assert cy.tolist() == [0, 1, 1]


def test_clean_can_be_switched_off() -> None:
    x = np.array([[1.0], [1.0], [np.nan]])
    y = np.array([0, 0, 0])
    cx, _, report = clean(x, y, CleaningSpec(drop_invalid=False, drop_duplicates=False))
    assert len(cx) == 3 and report.rows_out == 3


def test_stratified_split_keeps_class_shares_and_is_disjoint() -> None:
    y = np.repeat(np.arange(4), 100)
    train, val, test = stratified_split(y, (0.2, 0.1), seed=3, stratify=True)
    assert len(set(train) | set(val) | set(test)) == 400
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    for c in range(4):
        assert (y[val] == c).sum() == 20
        assert (y[test] == c).sum() == 10
    again = stratified_split(y, (0.2, 0.1), seed=3, stratify=True)
    assert all((a == b).all() for a, b in zip((train, val, test), again, strict=True))


def test_standardize_uses_train_statistics_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(500, 3)).astype(np.float32)
    pre = fit_preprocessor(x, "standardize", None)
    z = pre.apply(x)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(z.std(axis=0), 1, atol=1e-3)
    restored = Preprocessor.from_json(pre.to_json())
    assert np.allclose(restored.apply(x), z)


def test_normalize_maps_train_range_to_unit_interval() -> None:
    x = np.array([[0.0, 10.0], [5.0, 20.0], [10.0, 30.0]], dtype=np.float32)
    out = fit_preprocessor(x, "normalize", None).apply(x)
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[:, 0].tolist() == [0.0, 0.5, 1.0]


def test_zscore_outlier_clipping() -> None:
    x = np.concatenate([np.zeros((99, 1)), [[1000.0]]]).astype(np.float32)
    pre = fit_preprocessor(x, "none", 3.0)
    out = pre.apply(x)
    assert out.max() < 1000.0
    assert pre.clip_high is not None and out.max() == pytest.approx(float(pre.clip_high[0]))


def test_constant_features_do_not_divide_by_zero() -> None:
    x = np.ones((10, 2), dtype=np.float32)
    out = fit_preprocessor(x, "standardize", None).apply(x)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_disjoint_equal_and_reshuffled_each_epoch(world: int) -> None:
    n = 1259
    shards = [shard_indices(n, r, world, epoch=1, seed=0) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == n // world
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union) == (n // world) * world
    next_epoch = shard_indices(n, 0, world, epoch=2, seed=0)
    assert not np.array_equal(next_epoch, shards[0])
    assert np.array_equal(shard_indices(n, 0, world, epoch=1, seed=0), shards[0])


def test_eval_indices_cover_the_split_once() -> None:
    parts = [eval_indices(269, r, 2) for r in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(269))


def test_prepare_digits() -> None:
    data = prepare_data(DataSpec(), seed=0)
    assert data.sample_shape == (1, 8, 8)
    assert data.num_classes == 10
    assert data.task == "classification"
    total = len(data.x_train) + len(data.x_val) + len(data.x_test)
    assert total == data.cleaning.rows_out == 1797
    assert len(data.x_val) == pytest.approx(0.15 * 1797, abs=10)
    assert abs(float(data.x_train.mean())) < 1e-3  # standardised with train statistics


def test_prepare_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=300)
    x[5, 0, 0] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    data = prepare_data(DataSpec(source=str(path), preprocessing="normalize"), seed=0)
    assert data.sample_shape == (1, 6, 6)
    assert data.num_classes == 3
    assert data.cleaning.dropped_invalid == 1
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"features": np.zeros((4, 2)), "y": np.zeros(4)}, "no array named x"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(5)}, "x has 4 rows but y has 5"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "empty"),
    ],
)
def test_bad_npz_files_name_the_problem(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(SpecError) as err:
        prepare_data(DataSpec(source=str(path)), seed=0)
    assert message in err.value.render()
    assert err.value.issues[0].field_path == "data.source"


def test_npz_that_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(SpecError) as err:
        prepare_data(DataSpec(source=str(path)), seed=0)
    assert "cannot read the .npz file" in err.value.render()


# -- bad data files: refused from their headers at submit/--dry-run/predict, clearly at run time --------
def _npy_bytes(shape: tuple[int, ...], data: bytes, descr: str = "<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _bad_data_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words its message must hold)."""
    import os
    import zipfile

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = np.arange(200) % 3
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=y)
    raw = good.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, words: str) -> None:
        path = tmp_path / f"{name}.npz"
        path.write_bytes(content)
        files[name] = (path, words)

    put("empty", b"", "the file is empty (0 bytes)")
    put("truncated", raw[: len(raw) // 2], "cannot read the .npz file")
    put("garbage", os.urandom(3000), "cannot read the .npz file")
    flipped = bytearray(raw)
    flipped[300] ^= 0xFF
    put("bad-crc", bytes(flipped), "fails its checksum")
    np.save(tmp_path / "plain.npy", x)
    put("renamed-npy", (tmp_path / "plain.npy").read_bytes(), "single array, not an .npz")
    y_bytes = _npy_bytes((200,), y.astype("<i8").tobytes(), "<i8")
    for name, header_shape, words in [
        ("huge-shape", (10**12, 8), "more than the 16 GiB"),
        ("declares-more-than-held", (300, 8), "truncated or corrupt"),
        ("declares-less-than-held", (100, 8), "truncated or corrupt"),
    ]:
        path = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", _npy_bytes(header_shape, x.tobytes()))
            archive.writestr("y.npy", y_bytes)
        files[name] = (path, words)
    for name, arrays, words in [
        ("objects", {"x": np.array([{"a": 1}] * 3, dtype=object), "y": np.arange(3)}, "need pickle"),
        ("strings", {"x": np.array([["a"]] * 3), "y": np.arange(3)}, "numeric arrays only"),
        ("no-y", {"x": x}, "no array named y"),
        ("rows-differ", {"x": x, "y": y[:10]}, "x has 200 rows but y has 10"),
        ("no-rows", {"x": x[:0], "y": y[:0]}, "holds no samples"),
        ("scalar-x", {"x": np.float32(1), "y": y}, "single value"),
        ("one-hot-y", {"x": x, "y": np.eye(3)[y]}, "one label or one target"),
    ]:
        path = tmp_path / f"{name}.npz"
        with path.open("wb") as handle:  # np.savez would append .npz to a str path only
            np.savez(handle, **arrays)
        files[name] = (path, words)
    return files


def test_bad_data_files_are_refused_at_dry_run_before_any_record(tmp_path: Path, home: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main

    for name, (path, words) in _bad_data_files(tmp_path).items():
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(f"name: j\nmodel: {{type: cnn}}\ndata: {{source: {path.name}}}\n")
        for verb in (["submit", "--dry-run"], ["submit"], ["validate"]):
            result = CliRunner().invoke(main, [*verb, str(spec)])
            assert result.exit_code == 2, (name, verb, result.output)
            assert "data.source" in result.output and words in result.output, (name, result.output)
            assert "fix:" in result.output and "internal error" not in result.output
    assert not home.exists(), "a refused submit created the job store or a job directory"


def test_bad_data_files_are_clear_errors_at_run_time(tmp_path: Path) -> None:
    """The runtime's loader (the job's driver) says the same instead of failing with a traceback."""
    for name, (path, words) in _bad_data_files(tmp_path).items():
        with pytest.raises(SpecError) as err:
            prepare_data(DataSpec(source=str(path)), seed=0)
        assert words in err.value.render(), name
        assert err.value.issues[0].field_path == "data.source" and err.value.issues[0].fix


def test_bad_predict_inputs_are_usage_errors(tmp_path: Path) -> None:
    from orchestrator.errors import UsageError
    from orchestrator.models.predict import read_inputs

    files = _bad_data_files(tmp_path)
    for name in ("empty", "truncated", "garbage", "bad-crc", "renamed-npy", "huge-shape", "objects", "no-rows"):
        path, words = files[name]
        with pytest.raises(UsageError) as err:
            read_inputs(str(path), (8,))
        assert words in err.value.render() and err.value.fix, name


def test_a_good_file_passes_the_header_check(tmp_path: Path) -> None:
    from orchestrator.spec.datafile import inspect_npz

    np.savez_compressed(tmp_path / "ok.npz", x=np.zeros((50, 1, 8, 8), np.float32), y=np.zeros((50, 1), np.int64))
    info = inspect_npz(tmp_path / "ok.npz")
    assert info["x"].shape == (50, 1, 8, 8) and info["y"].rows == 50
