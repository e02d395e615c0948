"""Data sets of files read with Ray Data: the split, the statistics pass, and each worker's stream.

Guarantees (docs/data.md says the same to users):

* **Split.** Every row gets a 64-bit key: a hash of its decoded features and label (an image's
  pixels after resizing). ``splitmix(key, training.seed)`` mapped to [0, 1) puts the row in test
  (below ``test_fraction``), validation (below test + validation) or training. The split depends
  on the rows and the seed only: not on the order, the number of files or of workers, and it is
  the same on every run. Identical rows land in the same split (no duplicate leaks into test).
  The row key (53 bits) is also the sample id recorded per rank and epoch (``shards.json``).
* **Statistics.** One streaming pass over every file (driver side, Ray Data) counts the rows of
  each split per file and fits the preprocessor (standardize / min-max, optional clipping: a second
  pass) on the training split only; it is saved with the model as for the in-memory path.
* **Shards.** Each epoch, the files holding training rows are shuffled with
  ``(seed, epoch)`` and dealt, in that order, to the rank with the fewest training rows so far.
  Every rank reads only its files (Ray Data, ``preserve_order``), keeps the training rows and
  passes them through a shuffle buffer of ``data.shuffle_buffer`` rows seeded by
  ``(seed, epoch, rank)``. Ranks are disjoint by construction (a file belongs to one rank per
  epoch); every rank trains the same number of rows (the smallest rank's count, so DDP runs the
  same steps), the surplus rows of the larger ranks are left out of that epoch.
* **Resume.** The stream of an epoch is a pure function of (files, seed, epoch, rank, world size),
  so a mid-epoch restart with the same worker count replays it and skips the batches already
  trained: the same samples are not seen twice in that epoch. With another worker count the
  restarted epoch is dealt anew and its first ``step_in_epoch`` batches are skipped (samples may
  be repeated or missed in that one epoch).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.errors import SpecError, SpecIssue
from orchestrator.runtime.data import CleaningReport, PreparedData, Preprocessor
from orchestrator.spec.datasource import DataFile, SourceError, SourceListing, list_source
from orchestrator.spec.models import DataSpec

#: Split codes.
TRAIN, VAL, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "validation": VAL, "test": TEST}
_MASK53 = (1 << 53) - 1
#: Read tasks reserve no CPU (the trainer workers hold them; reading is I/O and decode) and at most
#: this many run per dataset at once (what bounds a reader's memory, with Ray Data's backpressure).
READ_CONCURRENCY = 2


def fail(message: str, fix: str, field_path: str = "data.source") -> SpecError:
    return SpecError([SpecIssue(field_path, message, fix=fix)])


# -- keys and the split -----------------------------------------------------------------
def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 in, uint64 out; overflow wraps, as intended)."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def row_keys(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of (float32 features, label): the same row always has the same key."""
    n = len(x)
    flat = np.ascontiguousarray(x.reshape(n, -1), dtype=np.float32).view(np.uint32)
    weights = _mix(np.arange(1, flat.shape[1] + 1, dtype=np.uint64)) | np.uint64(1)
    h = np.empty(n, dtype=np.uint64)
    step = max(1, (1 << 17) // max(flat.shape[1], 1))  # rows per chunk: a ~1 MB uint64 product stays in cache
    with np.errstate(over="ignore"):
        for start in range(0, n, step):  # sum_j u64(bits_j) * w_j (mod 2**64), chunk by chunk: 4-5x faster
            h[start:start + step] = (flat[start:start + step].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
        label = np.ascontiguousarray(np.asarray(y, dtype=np.float64)).view(np.uint64)
        h = _mix(h ^ _mix(label + np.uint64(0x9E3779B97F4A7C15)))
    return h


def split_codes(keys: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """TRAIN / VAL / TEST per key: deterministic in (key, seed)."""
    with np.errstate(over="ignore"):
        u = _mix(keys ^ _mix(np.full(len(keys), seed, dtype=np.uint64))).astype(np.float64) / 2.0**64
    codes = np.full(len(keys), TRAIN, dtype=np.int8)
    codes[u < test_fraction + val_fraction] = VAL
    codes[u < test_fraction] = TEST
    return codes


def sample_ids(keys: np.ndarray) -> np.ndarray:
    """The recorded sample id of each row: its key's low 53 bits (exact in JSON)."""
    return (keys & np.uint64(_MASK53)).astype(np.int64)


# -- decoding: Ray Data batches -> x, y ----------------------------------------------------
@dataclass(frozen=True)
class Decoder:
    """Turns a Ray Data batch of one format into features, labels, keys, split codes and file indices.

    Picklable (it runs in Ray Data's tasks): the spec's column choices, the split's seed and fractions,
    the file index by path, the image classes.
    """

    fmt: str
    label_column: str
    feature_columns: tuple[str, ...] | None
    seed: int
    val_fraction: float
    test_fraction: float
    drop_invalid: bool
    file_index: dict[str, int]
    classes: tuple[str, ...] = ()
    #: Keep only this split's rows (None: every row, for the statistics pass).
    keep: int | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        x, y, paths = self._features(batch, paths)
        files = np.asarray([self._file(p) for p in paths], dtype=np.int32)
        x = x.astype(np.float32, copy=False)
        if self.drop_invalid and len(x):
            ok = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if np.issubdtype(y.dtype, np.floating):
                ok &= np.isfinite(y)
            if not ok.all():  # the usual case keeps every row: no copy
                x, y, files = x[ok], y[ok], files[ok]
        keys = row_keys(x, y)
        codes = split_codes(keys, self.seed, self.val_fraction, self.test_fraction)
        if self.keep is not None:
            sel = codes == self.keep
            x, y, keys, codes, files = x[sel], y[sel], keys[sel], codes[sel], files[sel]
        return {"x": x, "y": y, "key": keys.view(np.int64), "split": codes, "file": files}

    def _file(self, path: str) -> int:
        found = self.file_index.get(path)
        if found is None:  # Ray Data may name a file with or without a leading slash / scheme
            found = self.file_index.get(path.lstrip("/"), self.file_index.get("/" + path.lstrip("/"), -1))
        return found

    def _features(self, batch: dict[str, np.ndarray], paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if self.fmt == "images":
            img = np.asarray(batch["image"])
            x = img[:, None, :, :] if img.ndim == 3 else np.moveaxis(img, -1, 1)
            y = np.asarray([self.classes.index(_class_of(p, self.classes)) for p in paths], dtype=np.int64)
            return x, y, paths
        if self.fmt in ("npz", "npy"):
            xs, ys, ps = [], [], []
            for raw, path in zip(batch["bytes"], paths, strict=True):
                x, y = decode_array_file(bytes(raw), self.fmt, path)
                xs.append(x)
                ys.append(y)
                ps.extend([path] * len(x))
            if len(xs) == 1:  # one file per block (read_files): no copy
                return xs[0], ys[0], ps
            return np.concatenate(xs), np.concatenate(ys), ps
        columns = list(self.feature_columns) if self.feature_columns else [
            c for c in batch if c not in (self.label_column, "path")]
        missing = [c for c in [*columns, self.label_column] if c not in batch]
        if missing:
            raise KeyError(f"{paths[0] if paths else 'a file'} has no column {', '.join(missing)}")
        x = np.stack([np.asarray(batch[c], dtype=np.float32) for c in columns], axis=1)
        return x, np.asarray(batch[self.label_column]), paths


def _class_of(path: str, classes: tuple[str, ...]) -> str:
    parts = path.replace("\\", "/").split("/")
    return parts[-2] if len(parts) >= 2 else classes[0]


def decode_array_file(raw: bytes, fmt: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y of one .npz shard (arrays x, y) or .npy shard (a structured array with fields x and y).

    ``allow_pickle=False``: a shard holding Python objects is refused, never unpickled (Ray Data's
    own read_numpy unpickles). Errors name the file."""
    import io

    try:
        if fmt == "npz":
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                x, y = np.asarray(npz["x"]), np.asarray(npz["y"])
        else:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
            if arr.dtype.names is None or not {"x", "y"} <= set(arr.dtype.names):
                raise ValueError("a .npy shard must be a structured array with fields x and y")
            x, y = np.asarray(arr["x"]), np.asarray(arr["y"])
    except Exception as exc:  # noqa: BLE001 - every way a shard is bad becomes one message with its path
        raise ValueError(f"{path}: cannot read the {fmt} shard: {str(exc)[:200] or type(exc).__name__}") from None
    if len(x) != len(y):
        raise ValueError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    y = y.reshape(len(y), -1)[:, 0] if y.ndim > 1 else y
    return (x[:, None] if x.ndim == 3 else x), y  # 2-D samples are 1-channel images, as for one .npz


# -- reading --------------------------------------------------------------------------------
#: Small files are grouped into read blocks of about this many bytes (one task per tiny PNG is slow).
BLOCK_BYTES = 64 << 20


def read_blocks(files: list[DataFile]) -> int:
    """How many read blocks: never more than files (no split, so read and decode fuse); small files
    grouped up to ``BLOCK_BYTES`` a block; at least ``READ_CONCURRENCY`` where there are that many files."""
    if not files:
        return 1
    mean = max(1, sum(f.size for f in files) // len(files))
    per_block = max(1, BLOCK_BYTES // mean)
    return max(min(len(files), READ_CONCURRENCY), -(-len(files) // per_block))


def read_files(listing: SourceListing, files: list[DataFile], spec: DataSpec, image_size: tuple[int, int] | None,
               decoder: Decoder) -> Any:
    """A Ray Data dataset of ``files`` (in this order), decoded by ``decoder``."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a stream in file order: the epoch's order is reproducible
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False  # Ray 2.60's V2 Parquet path took 10-20 s for three small files here (0.2 s without)
    paths = [f.path for f in files]
    # No more blocks than files: Ray Data would otherwise split each read into ~12 blocks, and a split
    # read cannot be fused with the decoder (two tasks and a trip through the object store per file).
    read: dict[str, Any] = {"filesystem": listing.fs, "include_paths": True, "concurrency": READ_CONCURRENCY,
                            "num_cpus": 0, "override_num_blocks": read_blocks(files)}
    if listing.format == "parquet":
        cols = [*spec.feature_columns, spec.label_column] if spec.feature_columns else None
        ds = ray.data.read_parquet(paths, columns=cols, **read)
    elif listing.format == "csv":
        ds = ray.data.read_csv(paths, **read)
    elif listing.format == "images":
        mode = "L" if spec.image_mode == "grayscale" else "RGB"
        ds = ray.data.read_images(paths, size=image_size, mode=mode, **read)
    else:
        ds = ray.data.read_binary_files(paths, **read)
    return ds.map_batches(decoder, batch_format="numpy", batch_size=None, num_cpus=0,
                          compute=ray.data.TaskPoolStrategy(size=READ_CONCURRENCY), zero_copy_batch=True)


def _warm_worker() -> None:
    import orchestrator.runtime.datasets  # noqa: F401 - what a read task unpickles first

    time.sleep(1.0)  # held a moment, so that the READ_CONCURRENCY tasks take one process each


def warm_read_workers() -> None:
    """Have Ray start this worker's read-task processes now, beside the model's set-up, rather than at
    the first batch (a fresh Ray worker process takes seconds to start on a small machine; the
    embedded Ray keeps idle ones for ``IDLE_WORKER_KEEP_MS``). Fire and forget."""
    import ray

    warm = ray.remote(num_cpus=0, max_retries=0)(_warm_worker)
    for _ in range(READ_CONCURRENCY):
        warm.remote()


# -- the plan --------------------------------------------------------------------------------
@dataclass
class StreamPlan:
    """What every worker needs to stream its part: the files, the per-file split counts, the decoder."""

    listing: SourceListing
    spec: DataSpec
    seed: int
    image_size: tuple[int, int] | None
    #: rows per file and split: shape (files, 3) (train, validation, test)
    counts: np.ndarray
    preprocessor: Preprocessor
    label_counts: dict[int, int] = field(default_factory=dict)
    sample_shape: tuple[int, ...] = ()
    task: str = "classification"
    num_classes: int = 0

    def decoder(self, keep: int | None) -> Decoder:
        spec = self.spec
        return Decoder(self.listing.format, spec.label_column,
                       tuple(spec.feature_columns) if spec.feature_columns else None, self.seed,
                       spec.validation_fraction, spec.test_fraction, spec.cleaning.drop_invalid,
                       {f.path: i for i, f in enumerate(self.listing.files)}, self.listing.classes, keep)

    def assign(self, epoch: int, world: int) -> list[list[int]]:
        """Each rank's training files for ``epoch``, in reading order (see the module docstring)."""
        has_train = np.flatnonzero(self.counts[:, TRAIN] > 0)
        order = has_train[np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(has_train))]
        load = [0] * world
        out: list[list[int]] = [[] for _ in range(world)]
        for i in order:
            r = min(range(world), key=lambda k: (load[k], k))
            out[r].append(int(i))
            load[r] += int(self.counts[i, TRAIN])
        return out

    def epoch_rows(self, epoch: int, world: int) -> int:
        """The training rows every rank trains in ``epoch`` (the smallest rank's)."""
        return min(int(self.counts[files, TRAIN].sum()) for files in self.assign(epoch, world))

    def eval_files(self, split: int, rank: int, world: int) -> list[int]:
        """This rank's files for evaluating ``split`` (round-robin over the files holding it)."""
        return [int(i) for i in np.flatnonzero(self.counts[:, split] > 0)[rank::world]]

    def stream(self, files: list[int], keep: int | None) -> Iterator[dict[str, np.ndarray]]:
        """The decoded rows of ``keep`` in ``files``, in file order (Ray Data blocks)."""
        if not files:
            return
        ds = read_files(self.listing, [self.listing.files[i] for i in files], self.spec, self.image_size,
                        self.decoder(keep))
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            if len(batch["x"]):
                yield batch

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.listing.format,
            "files": len(self.listing.files),
            "bytes": self.listing.total_bytes,
            "split": {"rule": "splitmix64(row key ^ seed) -> test < test_fraction <= validation < "
                              "test_fraction + validation_fraction <= train", "seed": self.seed,
                      "rows": {name: int(self.counts[:, code].sum()) for name, code in SPLITS.items()}},
            "label_counts": {str(k): v for k, v in sorted(self.label_counts.items())},
        }


def check_workers(plan: StreamPlan, workers: int) -> None:
    """Refuse a worker count larger than the files holding training rows (files are the unit of sharding)."""
    files = int((plan.counts[:, TRAIN] > 0).sum())
    if workers > files:
        raise fail(f"{workers} workers but only {files} file{'s' if files != 1 else ''} with training rows: "
                   "each file is read by one worker per epoch, so some workers would have nothing",
                   f"use at most {files} workers, or write the data as more shards (at least one per worker, "
                   "e.g. orchestrator data generate ... --shards N)", "resources.workers")


# -- the statistics pass (driver) -----------------------------------------------------------
class _Moments:
    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        s, q, lo, hi = x64.sum(0), (x64 * x64).sum(0), x64.min(0), x64.max(0)
        if self.sum is None:
            self.sum, self.sumsq, self.lo, self.hi = s, q, lo, hi
        else:
            assert self.sumsq is not None and self.lo is not None and self.hi is not None
            self.sum += s
            self.sumsq += q
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        self.n += len(x)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.sum is not None and self.sumsq is not None
        mean = self.sum / max(self.n, 1)
        var = np.maximum(self.sumsq / max(self.n, 1) - mean * mean, 0.0)
        std = np.sqrt(var)
        return mean, np.where(std > 1e-12, std, 1.0)


def precheck(spec: DataSpec) -> SourceListing:
    """The listing, and the checks that need no Ray: files present, one format, columns in every header."""
    try:
        listing = list_source(spec.source, spec.format)
    except SourceError as exc:
        raise fail(exc.message, exc.fix) from None
    check_headers(listing, spec)
    return listing


def plan_stream(spec: DataSpec, seed: int) -> StreamPlan:
    """List the files, then one streaming pass (two with clipping): split counts per file and training
    statistics. Raises SpecError naming the file for a corrupt or empty file, a missing column."""
    listing = precheck(spec)
    image_size: tuple[int, int] | None = None
    if listing.format == "images":
        image_size = (spec.image_size[0], spec.image_size[1]) if spec.image_size else first_image_size(listing)
    plan = StreamPlan(listing, spec, seed, image_size, np.zeros((len(listing.files), 3), dtype=np.int64),
                      Preprocessor("none", np.zeros(1, np.float32), np.ones(1, np.float32)))
    moments = _Moments()
    labels: dict[int, int] = {}
    integral, seen = True, False
    for batch in _guarded(plan, plan.stream(list(range(len(listing.files))), keep=None)):
        np.add.at(plan.counts, (batch["file"], batch["split"].astype(np.int64)), 1)
        train = batch["split"] == TRAIN
        if train.any():
            moments.add(batch["x"][train].reshape(int(train.sum()), -1))
        y = batch["y"]
        seen = True
        integral = integral and (np.issubdtype(y.dtype, np.integer) or bool(np.all(np.mod(y, 1) == 0)))
        if integral:
            vals, cnt = np.unique(y.astype(np.int64), return_counts=True)
            for v, c in zip(vals.tolist(), cnt.tolist(), strict=True):
                labels[v] = labels.get(v, 0) + c
        plan.sample_shape = tuple(batch["x"].shape[1:])
    empty = [f for f, row in zip(listing.files, plan.counts, strict=True) if row.sum() == 0]
    if empty:
        raise fail(f"{empty[0].path}: the file holds no usable rows" + (
            f" ({len(empty)} such files)" if len(empty) > 1 else ""), "delete it or write it again")
    if plan.counts[:, TRAIN].sum() == 0 or plan.counts[:, VAL].sum() == 0:
        raise fail(f"only {int(plan.counts.sum())} rows; too few to split", "use more data")
    classify = seen and integral
    if classify and min(labels) < 0:
        raise fail("class labels must be 0, 1, 2, ...", "map labels to non-negative integers")
    plan.label_counts = labels if classify else {}
    plan.task = "classification" if classify else "regression"
    plan.num_classes = max(len(listing.classes), max(labels) + 1) if classify else 0
    plan.preprocessor = _fit(plan, moments, spec)
    return plan


def _fit(plan: StreamPlan, moments: _Moments, spec: DataSpec) -> Preprocessor:
    shape = plan.sample_shape
    mean, std = moments.mean_std()
    low = high = None
    if spec.cleaning.clip_outliers_z is not None:  # a second pass: the statistics of the clipped values
        z = spec.cleaning.clip_outliers_z
        low, high = mean - z * std, mean + z * std
        moments = _Moments()
        for batch in plan.stream(list(range(len(plan.listing.files))), keep=TRAIN):
            x = batch["x"].reshape(len(batch["x"]), -1)
            moments.add(np.clip(x, low, high))
        mean, std = moments.mean_std()
    assert moments.lo is not None and moments.hi is not None
    if spec.preprocessing == "standardize":
        shift, scale = mean, std
    elif spec.preprocessing == "normalize":
        shift, scale = moments.lo, np.where(moments.hi - moments.lo > 1e-12, moments.hi - moments.lo, 1.0)
    else:
        shift, scale = np.zeros_like(mean), np.ones_like(mean)

    def shaped(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.reshape(shape).astype(np.float32)

    return Preprocessor(spec.preprocessing, shaped(shift), shaped(scale), shaped(low), shaped(high))  # type: ignore[arg-type]


def _guarded(plan: StreamPlan, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data's errors turned into a SpecError naming the bad file."""
    try:
        yield from batches
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps the reader's error; find and name the file
        bad = find_bad_file(plan.listing, plan.spec)
        if bad is not None:
            raise fail(*bad) from None
        text = str(exc).strip().splitlines()
        raise fail(f"cannot read {plan.listing.source}: {(text[-1] if text else type(exc).__name__)[:300]}",
                   "check the files with `orchestrator data inspect`") from None


def check_headers(listing: SourceListing, spec: DataSpec) -> None:
    """Parquet footers and CSV header lines of every file: missing columns, corrupt or empty files."""
    if listing.format not in ("parquet", "csv"):
        return
    wanted = [*(spec.feature_columns or []), spec.label_column]
    for f in listing.files:
        columns = file_columns(listing, f)
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise fail(f"{f.path}: no column {', '.join(repr(c) for c in missing)} (it has "
                       f"{', '.join(columns[:12])}{', ...' if len(columns) > 12 else ''})",
                       "set data.label_column / data.feature_columns to columns the files have",
                       "data.label_column" if spec.label_column in missing else "data.feature_columns")


def file_columns(listing: SourceListing, f: DataFile) -> list[str]:
    """The column names of a Parquet or CSV file (footer / first line); SpecError if unreadable."""
    try:
        if listing.format == "parquet":
            import pyarrow.parquet as pq

            with listing.fs.open_input_file(f.path) as fh:
                meta = pq.ParquetFile(fh).metadata
                if meta.num_rows == 0:
                    raise fail(f"{f.path}: the Parquet file holds no rows", "delete it or write it again")
                return list(meta.schema.names)
        with listing.fs.open_input_stream(f.path) as fh:
            head = bytes(fh.read(1 << 16)).decode("utf-8", errors="replace")
        lines = [line for line in head.splitlines() if line.strip()]
        if len(lines) < 2:
            raise fail(f"{f.path}: the CSV file holds no rows (a header line at most)", "delete it or write it again")
        return [c.strip().strip('"') for c in lines[0].split(",")]
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt footer, an unreadable object
        raise fail(f"{f.path}: cannot read the {listing.format} file ({str(exc).splitlines()[0][:200]}); it may "
                   "be corrupt or truncated", "write it again, or remove it from the data set") from None


def first_image_size(listing: SourceListing) -> tuple[int, int]:
    from PIL import Image

    f = listing.files[0]
    try:
        with listing.fs.open_input_file(f.path) as fh, Image.open(fh) as img:
            return (img.height, img.width)
    except Exception as exc:  # noqa: BLE001
        raise fail(f"{f.path}: not a readable image ({exc})", "write it again, or remove it") from None


def find_bad_file(listing: SourceListing, spec: DataSpec) -> tuple[str, str] | None:
    """The first file that does not decode, as (message, fix); read with the format's own library,
    only after a pass failed."""
    import io

    for f in listing.files:
        try:
            with listing.fs.open_input_stream(f.path) as fh:
                raw = bytes(fh.read())
            if listing.format == "images":
                from PIL import Image

                with Image.open(io.BytesIO(raw)) as img:
                    img.load()
            elif listing.format in ("npz", "npy"):
                decode_array_file(raw, listing.format, f.path)
            elif listing.format == "csv":
                import pyarrow.csv as pcsv

                pcsv.read_csv(io.BytesIO(raw))
            else:
                import pyarrow.parquet as pq

                pq.read_table(io.BytesIO(raw))
        except Exception as exc:  # noqa: BLE001
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return (f"{f.path}: cannot read it as {listing.format} ({why.removeprefix(f.path + ': ')}); it may be "
                    "corrupt or truncated", "write it again, or remove it from the data set")
    return None


# -- preparing a job's data ---------------------------------------------------------------------
def prepare_stream(spec: DataSpec, seed: int, workers: int) -> PreparedData:
    """The job's data for streaming: no rows in memory, the plan in ``PreparedData.stream``."""
    plan = plan_stream(spec, seed)
    check_workers(plan, workers)
    empty = np.zeros((0, *plan.sample_shape), np.float32)
    counts = plan.counts.sum(0)
    no_y = np.zeros(0, np.int64 if plan.task == "classification" else np.float32)
    return PreparedData(
        x_train=empty, y_train=no_y, x_val=empty, y_val=no_y,
        x_test=empty, y_test=no_y, sample_shape=plan.sample_shape,
        num_classes=plan.num_classes, task=plan.task, preprocessor=plan.preprocessor,
        cleaning=CleaningReport(rows_in=int(counts.sum())), source=spec.source, stream=plan,
    )


def load_file_set(spec: DataSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A data set of files read whole into memory (``data.streaming: false``): x and y of every row."""
    plan = plan_stream(spec.model_copy(update={"preprocessing": "none"}), seed)
    xs, ys = [], []
    for batch in _guarded(plan, plan.stream(list(range(len(plan.listing.files))), keep=None)):
        xs.append(batch["x"])
        ys.append(batch["y"])
    return np.concatenate(xs), np.concatenate(ys)


# -- a worker's stream ---------------------------------------------------------------------------
class ShuffleBuffer:
    """A seeded shuffle buffer whose output depends on the row stream only, not on how it is chunked:
    it fills to ``capacity + batch`` rows before each draw of ``batch`` random rows.

    The rows live in preallocated arrays; a draw copies its ``batch`` rows out and moves the newest
    rows into the holes, so each draw costs O(batch), not O(capacity).
    """

    def __init__(self, capacity: int, batch: int, rng: np.random.Generator) -> None:
        self.capacity, self.batch, self.rng = capacity, batch, rng
        self.rows: dict[str, np.ndarray] | None = None
        self.size = 0

    def _store(self, part: dict[str, np.ndarray]) -> None:
        if self.rows is None:
            room = self.capacity + self.batch
            self.rows = {k: np.empty((room, *v.shape[1:]), dtype=v.dtype) for k, v in part.items()}
        n = len(part["key"])
        for k, v in part.items():
            self.rows[k][self.size:self.size + n] = v
        self.size += n

    def _draw(self) -> dict[str, np.ndarray]:
        assert self.rows is not None
        n = self.size
        pick = self.rng.choice(n, self.batch, replace=False)
        out = {k: v[pick] for k, v in self.rows.items()}
        tail = n - self.batch
        picked = np.zeros(n, bool)
        picked[pick] = True
        holes = np.flatnonzero(picked[:tail])  # drawn rows below the tail: refilled from the tail's rest
        movers = tail + np.flatnonzero(~picked[tail:])
        for v in self.rows.values():
            v[holes] = v[movers]
        self.size = tail
        return out

    def push(self, chunk: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        n, pos = len(chunk["key"]), 0
        while pos < n:
            take = min(self.capacity + self.batch - self.size, n - pos)
            self._store({k: chunk[k][pos:pos + take] for k in ("x", "y", "key")})
            pos += take
            if self.size == self.capacity + self.batch:
                yield self._draw()

    def flush(self) -> Iterator[dict[str, np.ndarray]]:
        if not self.size:
            return
        assert self.rows is not None
        order = self.rng.permutation(self.size)
        for start in range(0, len(order), self.batch):
            sel = order[start:start + self.batch]
            yield {k: v[sel] for k, v in self.rows.items()}
        self.size = 0


def train_batches(plan: StreamPlan, epoch: int, rank: int, world: int, batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This rank's training batches for ``epoch`` (raw features), ``plan.epoch_rows`` rows in all."""
    total = plan.epoch_rows(epoch, world)
    files = plan.assign(epoch, world)[rank]
    buffer = ShuffleBuffer(plan.spec.shuffle_buffer, batch, np.random.default_rng([plan.seed, epoch, rank, 0xB0F]))
    sent = 0

    def cut(b: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        nonlocal sent
        n = min(len(b["key"]), total - sent)
        sent += n
        return {k: v[:n] for k, v in b.items()} if n > 0 else None

    for chunk in plan.stream(files, TRAIN):
        for out in buffer.push(chunk):
            if (b := cut(out)) is not None:
                yield b
        if sent >= total:
            return
    for out in buffer.flush():
        if (b := cut(out)) is not None:
            yield b


#: Preprocessed batches a producer keeps ready ahead of the training step.
PRODUCER_DEPTH = 8


class BatchProducer:
    """One epoch's training batches (read, shuffled, preprocessed), made on a background thread into a
    bounded queue, so that reading and preprocessing overlap the training steps.

    A producer made with ``after`` (the previous epoch's producer's ``made``) starts reading when that
    epoch's last batch is made, ``depth`` steps before its end: the next epoch's stream opens beside
    those last steps, the validation and the checkpoint, instead of stalling the first step of every
    epoch, and it does not take CPU from the training steps before (on a small machine the read
    tasks and the train workers share the cores). The batches are those of
    :func:`train_batches`, a pure function of the epoch, so a prefetched epoch is the same epoch
    (exact resume holds). Memory: the shuffle buffer and ``PRODUCER_DEPTH`` batches per producer, at
    most two producers at a time, whatever the data set's size."""

    def __init__(self, plan: StreamPlan, epoch: int, rank: int, world: int, batch: int,
                 after: threading.Event | None = None, depth: int = PRODUCER_DEPTH) -> None:
        self.plan, self.epoch, self.rank, self.world, self.batch = plan, epoch, rank, world, batch
        #: Set when this epoch's last batch is made (or the producer failed or was closed).
        self.made = threading.Event()
        self._after = after
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=f"orchestrator-stream-epoch-{epoch}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self._after is not None and not self._after.wait(0.2):
                if self._closed.is_set():
                    return
            apply = self.plan.preprocessor.apply
            for b in train_batches(self.plan, self.epoch, self.rank, self.world, self.batch):
                if not self._put(("batch", {"x": apply(b["x"]), "y": b["y"], "key": b["key"]})):
                    return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the training thread, as it was
            self._put(("error", exc))
        finally:
            self.made.set()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> BatchProducer:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "batch":
            return value  # type: ignore[no-any-return]
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (it ends at its next batch or within 0.2 s while waiting)."""
        self._closed.set()


class TrainFeed:
    """One epoch's training batches for the epoch loop: ``select(step)`` stages batch ``step`` into
    ``data.x_train`` / ``y_train`` (preprocessed by ``producer``) and returns the positions to train
    on; batches before the first one asked for (a mid-epoch resume) are read and skipped."""

    def __init__(self, data: PreparedData, producer: BatchProducer) -> None:
        self.data = data
        self.size = producer.plan.epoch_rows(producer.epoch, producer.world)
        self._it = producer
        self._next = 0
        self._ids: list[np.ndarray] = []

    def select(self, step: int, batch: int) -> np.ndarray:
        while self._next < step:  # resume: the stream is the same, skip what was trained
            next(self._it)
            self._next += 1
        b = next(self._it)
        self._next += 1
        self.data.x_train = b["x"]
        self.data.y_train = b["y"]
        self._ids.append(sample_ids(b["key"].view(np.uint64)))
        return np.arange(len(b["key"]))

    def trained(self, first: int, end: int, batch: int) -> np.ndarray:
        """The sample ids of the batches this attempt trained (what ``shards.json`` records)."""
        return np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)


def eval_batches(plan: StreamPlan, split: int, rank: int, world: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's part of a validation or test split, preprocessed, in batches of at most ``batch``."""
    for chunk in plan.stream(plan.eval_files(split, rank, world), split):
        x = plan.preprocessor.apply(chunk["x"])
        for start in range(0, len(x), batch):
            yield x[start:start + batch], chunk["y"][start:start + batch]


def inspect(spec: DataSpec, workers: int, seed: int) -> dict[str, Any]:
    """What ``orchestrator data inspect`` prints: the files, rows, shape, labels and each worker's part."""
    plan = plan_stream(spec, seed)
    listing = plan.listing
    columns: list[str] | None = None
    if listing.format in ("parquet", "csv"):
        columns = file_columns(listing, listing.files[0])
    assign = plan.assign(1, workers)
    per_worker = []
    for rank in range(workers):
        files = assign[rank]
        per_worker.append({
            "rank": rank, "train_files": [listing.files[i].rel for i in files],
            "train_rows": int(plan.counts[files, TRAIN].sum()) if files else 0,
            "validation_files": len(plan.eval_files(VAL, rank, workers)),
            "test_files": len(plan.eval_files(TEST, rank, workers)),
        })
    usable = (plan.counts[:, TRAIN] > 0).sum()
    return {
        "source": spec.source,
        **plan.summary(),
        "rows": int(plan.counts.sum()),
        "columns": columns,
        "sample_shape": list(plan.sample_shape),
        "task": plan.task,
        "num_classes": plan.num_classes,
        "classes": list(listing.classes) or None,
        "file_rows": {f.rel: int(row.sum()) for f, row in zip(listing.files, plan.counts, strict=True)},
        "workers": workers,
        "rows_per_worker_epoch": plan.epoch_rows(1, workers) if workers <= usable else 0,
        "per_worker": per_worker,
        "problem": None if workers <= usable else
        f"{workers} workers but only {usable} files with training rows (files are the unit of sharding)",
    }


def steps_for(size: int, batch: int) -> int:
    return max(1, math.ceil(size / batch))
