"""Data sets of files without Ray: listing, spec fields, the split, the shard plan, the shuffle buffer,
and every bad-input error (the Ray Data reads are in tests/integration/test_datasets_ray.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import EXIT_USER_ERROR, SpecError
from orchestrator.runtime.data import Preprocessor
from orchestrator.runtime.datagen import generate
from orchestrator.runtime.datasets import (
    TEST,
    TRAIN,
    VAL,
    Decoder,
    ShuffleBuffer,
    StreamPlan,
    check_headers,
    check_workers,
    find_bad_file,
    row_keys,
    split_codes,
)
from orchestrator.spec.datasource import DataFile, SourceError, list_source
from orchestrator.spec.loader import load_spec
from orchestrator.spec.models import DataSpec


def _plan(counts: list[list[int]], seed: int = 0) -> StreamPlan:
    files = [Path(f"/d/part-{i}.parquet") for i in range(len(counts))]
    from orchestrator.spec.datasource import SourceListing

    listing = SourceListing("/d", "parquet", tuple(DataFile(str(p), p.name, 1) for p in files), fs=None)
    return StreamPlan(listing, DataSpec(source="/d"), seed, None, np.asarray(counts, dtype=np.int64),
                      Preprocessor("none", np.zeros(1, np.float32), np.ones(1, np.float32)))


def test_split_is_a_function_of_the_row_and_seed() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5000, 6)).astype(np.float32), rng.integers(0, 3, 5000)
    keys = row_keys(x, y)
    assert len(np.unique(keys)) == 5000  # distinct rows, distinct keys
    codes = split_codes(keys, 7, 0.15, 0.15)
    perm = rng.permutation(5000)  # another order, another chunking: the same split per row
    again = np.concatenate([split_codes(row_keys(x[p], y[p]), 7, 0.15, 0.15) for p in np.array_split(perm, 7)])
    assert np.array_equal(again, codes[perm])
    share = np.bincount(codes, minlength=3) / 5000
    assert abs(share[TRAIN] - 0.70) < 0.03 and abs(share[VAL] - 0.15) < 0.03 and abs(share[TEST] - 0.15) < 0.03
    assert not np.array_equal(split_codes(keys, 8, 0.15, 0.15), codes)  # the seed moves rows
    assert np.array_equal(row_keys(x[:1], y[:1]), row_keys(x[:1].copy(), y[:1].copy()))


def test_epoch_deal_is_disjoint_balanced_seeded_and_changes_per_epoch() -> None:
    plan = _plan([[100 + 7 * i, 20, 20] for i in range(12)] + [[0, 30, 30]])
    for epoch in (1, 2, 3):
        deal = plan.assign(epoch, 3)
        flat = sorted(i for part in deal for i in part)
        assert flat == list(range(12))  # every file with training rows exactly once; file 12 has none
        assert deal == plan.assign(epoch, 3)  # a pure function of (seed, epoch, world)
        rows = [int(plan.counts[p, TRAIN].sum()) for p in deal]
        assert plan.epoch_rows(epoch, 3) == min(rows) and max(rows) - min(rows) <= 100 + 7 * 11
    assert plan.assign(1, 3) != plan.assign(2, 3)
    assert plan.eval_files(VAL, 0, 2) + plan.eval_files(VAL, 1, 2) != []
    assert sorted(plan.eval_files(VAL, 0, 2) + plan.eval_files(VAL, 1, 2)) == list(range(13))


def test_more_workers_than_files_is_refused_with_a_fix() -> None:
    plan = _plan([[50, 5, 5], [50, 5, 5], [0, 9, 9]])
    check_workers(plan, 2)
    with pytest.raises(SpecError) as err:
        check_workers(plan, 3)
    text = err.value.render()
    assert "3 workers but only 2 files with training rows" in text and "--shards" in text


def test_shuffle_buffer_output_does_not_depend_on_chunking() -> None:
    rows = {"x": np.arange(1000, dtype=np.float32)[:, None], "y": np.arange(1000), "key": np.arange(1000)}

    def run(cuts: list[int]) -> list[int]:
        buf = ShuffleBuffer(64, 32, np.random.default_rng([0, 1, 0]))
        out: list[int] = []
        for part in np.split(np.arange(1000), cuts):
            for b in buf.push({k: v[part] for k, v in rows.items()}):
                assert len(b["key"]) == 32
                out.extend(b["key"].tolist())
        for b in buf.flush():
            out.extend(b["key"].tolist())
        return out

    one = run([])
    assert sorted(one) == list(range(1000)) and one != list(range(1000))
    assert run([1, 2, 500, 999]) == one == run(list(range(10, 1000, 10)))


def test_decoder_reads_parquet_like_batches_drops_invalid_and_keeps_one_split() -> None:
    batch = {"a": np.array([1.0, 2.0, np.nan, 4.0]), "b": np.array([0.5, 0.5, 0.5, 0.5]),
             "label": np.array([0, 1, 1, 0]), "path": np.array(["/d/p.parquet"] * 4, dtype=object)}
    dec = Decoder("parquet", "label", None, 0, 0.15, 0.15, True, {"/d/p.parquet": 0})
    out = dec(batch)
    assert out["x"].shape == (3, 2) and out["x"][:, 0].tolist() == [1.0, 2.0, 4.0]
    assert out["file"].tolist() == [0, 0, 0]
    only = Decoder("parquet", "label", ("b",), 0, 0.15, 0.15, True, {"/d/p.parquet": 0}, keep=int(out["split"][0]))
    kept = only(batch)
    assert kept["x"].shape[1] == 1 and set(kept["split"].tolist()) == {int(out["split"][0])}


def test_listing_formats_and_the_errors(tmp_path: Path) -> None:
    generate("parquet", tmp_path / "pq", shards=3)
    (tmp_path / "pq" / "_SUCCESS").write_text("")
    listing = list_source(str(tmp_path / "pq"))
    assert listing.format == "parquet" and [f.rel for f in listing.files] == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert list_source(str(tmp_path / "pq" / "*-0000[01].parquet")).files[-1].rel == "part-00001.parquet"
    cases = {
        "nothing": (tmp_path / "none", "no files match"),
        "unknown": (tmp_path / "txt", "unknown data format"),
        "mixed": (tmp_path / "mixed", "mixes formats (csv, parquet)"),
        "flat": (tmp_path / "flat", "one sub-directory per class"),
        "empty": (tmp_path / "empty", "the file is empty (0 bytes)"),
    }
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("1,2\n")
    generate("csv", tmp_path / "mixed", shards=1)
    generate("parquet", tmp_path / "mixed", shards=1)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.npz").write_bytes(b"")
    for where, expected in cases.values():
        with pytest.raises(SourceError) as err:
            list_source(str(where))
        assert expected in err.value.message and err.value.fix


def test_missing_column_corrupt_and_empty_files_name_the_file(tmp_path: Path) -> None:
    generate("parquet", tmp_path / "pq", shards=2)
    listing = list_source(str(tmp_path / "pq"))
    with pytest.raises(SpecError) as err:
        check_headers(listing, DataSpec(source=str(tmp_path / "pq"), label_column="digit"))
    assert "part-00000.parquet: no column 'digit'" in err.value.render()
    assert err.value.issues[0].field_path == "data.label_column"
    (tmp_path / "pq" / "part-00001.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SpecError) as err:
        check_headers(list_source(str(tmp_path / "pq")), DataSpec(source=str(tmp_path / "pq")))
    assert "part-00001.parquet: cannot read the parquet file" in err.value.render()
    generate("csv", tmp_path / "csv", shards=2)
    (tmp_path / "csv" / "part-00001.csv").write_text('"p0","label"\n')
    with pytest.raises(SpecError) as err:
        check_headers(list_source(str(tmp_path / "csv")), DataSpec(source=str(tmp_path / "csv")))
    assert "part-00001.csv: the CSV file holds no rows" in err.value.render()
    generate("images", tmp_path / "img")
    bad = tmp_path / "img" / "3" / "digit-0000003.png"
    bad.write_bytes(bad.read_bytes()[:20])
    found = find_bad_file(list_source(str(tmp_path / "img")), DataSpec(source=str(tmp_path / "img")))
    assert found is not None and found[0].startswith(f"{bad}: cannot read it as images")
    generate("npz", tmp_path / "npz", shards=2)
    (tmp_path / "npz" / "part-00000.npz").write_bytes(b"PK\x03\x04 truncated")
    found = find_bad_file(list_source(str(tmp_path / "npz")), DataSpec(source=str(tmp_path / "npz")))
    assert found is not None and "part-00000.npz: cannot read it as npz" in found[0]


def test_spec_fields_are_checked_with_a_fix(tmp_path: Path) -> None:
    def check(text: str, *expected: str) -> None:
        path = tmp_path / "spec.yaml"
        path.write_text("name: j\nmodel: {type: cnn}\n" + text)
        with pytest.raises(SpecError) as err:
            load_spec(path)
        rendered = err.value.render()
        for piece in expected:
            assert piece in rendered, rendered
        assert "fix:" in rendered

    check("data: {source: digits, format: parquet}\n", "data.format", "no file format")
    check("data: {source: digits, streaming: true}\n", "data.streaming", "loaded into memory")
    check("data: {source: ./nothere}\n", "data.source", "no files match")
    generate("parquet", tmp_path / "pq", shards=2)
    check("data: {source: ./pq, label_column: label, feature_columns: [p0, label]}\n", "data.feature_columns")
    check("data: {source: ./pq, image_size: [8]}\n", "data.image_size")
    spec = load_spec(_write(tmp_path / "ok.yaml", "name: j\nmodel: {type: cnn}\ndata: {source: ./pq}\n"))
    assert spec.data.source == str(tmp_path / "pq") and spec.streams_data
    assert load_spec(_write(tmp_path / "tf.yaml", "name: j\nframework: tensorflow\nmodel: {type: cnn}\n"
                                "data: {source: ./pq}\n")).streams_data
    assert not load_spec(_write(tmp_path / "gan.yaml", "name: j\nmodel: {type: gan}\n"
                                "data: {source: ./pq, preprocessing: normalize}\n")).streams_data
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path / "gan-stream.yaml", "name: j\nmodel: {type: gan}\n"
                         "data: {source: ./pq, streaming: true, preprocessing: normalize}\n"))
    assert "data.streaming" in err.value.render() and "gan and entrypoint jobs" in err.value.render()
    assert not load_spec(_write(tmp_path / "mem.yaml", "name: j\nmodel: {type: cnn}\n"
                                "data: {source: ./pq, streaming: false}\n")).streams_data


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_data_generate_and_inspect_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["data", "generate", "npy", str(tmp_path / "npy"), "--shards", "3", "-o", "json"])
    assert made.exit_code == 0 and '"files": 3' in made.output and '"rows": 1797' in made.output
    rec = np.load(tmp_path / "npy" / "part-00000.npy")
    assert rec.dtype.names == ("x", "y") and rec["x"].shape == (599, 8, 8)
    missing = runner.invoke(main, ["data", "inspect", str(tmp_path / "nothing")])
    assert missing.exit_code == EXIT_USER_ERROR and "no files match" in missing.output
    assert "Traceback" not in missing.output
    generate("csv", tmp_path / "csv", shards=2)
    col = runner.invoke(main, ["data", "inspect", str(tmp_path / "csv"), "--label-column", "digit"])
    assert col.exit_code == EXIT_USER_ERROR and "part-00000.csv: no column 'digit'" in col.output
    builtin = runner.invoke(main, ["data", "inspect", "digits"])
    assert builtin.exit_code == EXIT_USER_ERROR and "not a data set of files" in builtin.output


def test_row_keys_are_the_documented_hash_chunk_by_chunk() -> None:
    """The split rests on these keys: the chunked computation equals the one-pass formula, on any row count."""
    from orchestrator.runtime.datasets import _mix, row_keys

    rng = np.random.default_rng(3)
    for n, shape in ((1, (5,)), (37, (3, 32, 32)), (1500, (64,))):
        x = rng.normal(size=(n, *shape)).astype(np.float32)
        y = rng.integers(0, 10, n)
        flat = x.reshape(n, -1).view(np.uint32).astype(np.uint64)
        weights = _mix(np.arange(1, flat.shape[1] + 1, dtype=np.uint64)) | np.uint64(1)
        with np.errstate(over="ignore"):
            h = (flat * weights).sum(axis=1, dtype=np.uint64)
            label = y.astype(np.float64).view(np.uint64)
            expected = _mix(h ^ _mix(label + np.uint64(0x9E3779B97F4A7C15)))
        assert (row_keys(x, y) == expected).all()
    assert len(set(row_keys(x, y).tolist())) == n  # distinct rows, distinct keys


def test_read_blocks_never_split_a_file_and_group_small_ones() -> None:
    from orchestrator.runtime.datasets import BLOCK_BYTES, READ_CONCURRENCY, read_blocks

    def files(n: int, size: int) -> list[DataFile]:
        return [DataFile(f"/d/{i}", str(i), size) for i in range(n)]

    assert read_blocks(files(1797, 300)) == READ_CONCURRENCY  # a folder of tiny PNGs: a few tasks
    assert read_blocks(files(4, 12 << 20)) == 2  # 12 MB shards: five to a 64 MB block, at least two blocks
    assert read_blocks(files(160, 12 << 20)) == 32
    assert read_blocks(files(10, BLOCK_BYTES * 2)) == 10  # big files: one block each, never fewer files
    assert read_blocks(files(1, 100)) == 1
