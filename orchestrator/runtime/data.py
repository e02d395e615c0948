"""Data loading, cleaning, splitting, preprocessing and per-worker sharding (NumPy only).

The driver prepares the data once (:func:`prepare_data`) and hands the arrays to the workers
through Ray's object store; each worker then takes its own shard of the training split every
epoch with :func:`shard_indices`. Preprocessing statistics are fitted on the training split only
and saved with the model, so ``predict`` applies exactly what training saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from orchestrator.errors import SpecError, SpecIssue
from orchestrator.spec.models import CleaningSpec, DataSpec


@dataclass(frozen=True)
class Preprocessor:
    """Clip outliers (z-score bounds), then standardise or min-max normalise, per feature."""

    kind: str
    shift: np.ndarray
    scale: np.ndarray
    clip_low: np.ndarray | None = None
    clip_high: np.ndarray | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=True)
        if self.clip_low is not None and self.clip_high is not None:
            np.clip(x, self.clip_low, self.clip_high, out=x)
        if self.kind != "none":
            x -= self.shift
            x /= self.scale
        return x

    def to_json(self) -> dict[str, Any]:
        def arr(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else a.astype(float).ravel().tolist()

        return {
            "kind": self.kind,
            "shape": list(self.shift.shape),
            "shift": arr(self.shift),
            "scale": arr(self.scale),
            "clip_low": arr(self.clip_low),
            "clip_high": arr(self.clip_high),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessor:
        shape = tuple(data["shape"])

        def arr(v: list[float] | None) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=np.float32).reshape(shape)

        shift, scale = arr(data["shift"]), arr(data["scale"])
        assert shift is not None and scale is not None  # written by to_json, never None
        return cls(data["kind"], shift, scale, arr(data["clip_low"]), arr(data["clip_high"]))


def fit_preprocessor(x: np.ndarray, kind: str, clip_z: float | None) -> Preprocessor:
    """Fit per-feature statistics on the training split."""
    x = x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    safe_std = np.where(std > 1e-12, std, 1.0)
    low = high = None
    if clip_z is not None:
        low = (mean - clip_z * safe_std).astype(np.float32)
        high = (mean + clip_z * safe_std).astype(np.float32)
        x = np.clip(x, low, high)
        mean, std = x.mean(axis=0), x.std(axis=0)
        safe_std = np.where(std > 1e-12, std, 1.0)
    if kind == "standardize":
        shift, scale = mean, safe_std
    elif kind == "normalize":
        lo, hi = x.min(axis=0), x.max(axis=0)
        shift, scale = lo, np.where(hi - lo > 1e-12, hi - lo, 1.0)
    else:
        shift, scale = np.zeros_like(mean), np.ones_like(mean)
    return Preprocessor(kind, shift.astype(np.float32), scale.astype(np.float32), low, high)


@dataclass
class CleaningReport:
    rows_in: int
    dropped_invalid: int = 0
    dropped_duplicates: int = 0

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.dropped_invalid - self.dropped_duplicates


def clean(x: np.ndarray, y: np.ndarray, spec: CleaningSpec) -> tuple[np.ndarray, np.ndarray, CleaningReport]:
    """Drop rows with NaN/inf and exact duplicates (same features and label, first one kept)."""
    report = CleaningReport(rows_in=len(x))
    if spec.drop_invalid:
        flat = x.reshape(len(x), -1)
        ok = np.isfinite(flat).all(axis=1)
        if np.issubdtype(y.dtype, np.floating):
            ok &= np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        report.dropped_invalid = int((~ok).sum())
        x, y = x[ok], y[ok]
    if spec.drop_duplicates and len(x):
        rows = np.concatenate(
            [x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)], axis=1
        )
        _, first = np.unique(rows, axis=0, return_index=True)
        keep = np.sort(first)
        report.dropped_duplicates = len(x) - len(keep)
        x, y = x[keep], y[keep]
    return x, y, report


@dataclass
class PreparedData:
    """Everything workers need: preprocessed splits plus the metadata to rebuild them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sample_shape: tuple[int, ...]
    num_classes: int
    task: str
    preprocessor: Preprocessor
    cleaning: CleaningReport
    source: str
    train_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: A streamed data set of files (:class:`orchestrator.runtime.datasets.StreamPlan`): no rows are held
    #: here; during training ``x_train``/``y_train`` hold the current batch only. None: in memory.
    stream: Any = None

    def summary(self) -> dict[str, Any]:
        if self.stream is not None:
            counts = self.stream.counts.sum(0)
            return {"source": self.source, "streaming": True, "train": int(counts[0]), "validation": int(counts[1]),
                    "test": int(counts[2]), "sample_shape": list(self.sample_shape),
                    "num_classes": self.num_classes, "task": self.task, **self.stream.summary()}
        return {
            "source": self.source,
            "train": len(self.x_train),
            "validation": len(self.x_val),
            "test": len(self.x_test),
            "sample_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            "task": self.task,
            "cleaning": asdict(self.cleaning),
        }


def load_source(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw features and labels from the spec's source (digits shaped as 1x8x8 images)."""
    if spec.source == "digits":
        images, target = digits_arrays()
        return images.astype(np.float32)[:, None, :, :], target.astype(np.int64)
    if spec.source == "sine":
        return sine_windows()
    if spec.source == "tokens":
        from orchestrator.runtime.tokens import token_sequences

        return token_sequences()
    if spec.is_file_set:  # read whole through Ray Data (data.streaming: false, or a job that cannot stream)
        from orchestrator.runtime.datasets import load_file_set

        return load_file_set(spec, 0)
    return _load_npz(spec.source)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, ``(images (1797, 8, 8), target (1797,))``, as ``load_digits`` returns
    them, read straight from the file scikit-learn ships: importing scikit-learn (scipy included)
    takes 2-6 s on a small machine, far longer than a job on a warm cluster takes to start."""
    import importlib.util
    from pathlib import Path

    found = importlib.util.find_spec("sklearn")
    locations = list(found.submodule_search_locations or []) if found is not None else []
    path = next((Path(p) / "datasets" / "data" / "digits.csv.gz" for p in locations
                 if (Path(p) / "datasets" / "data" / "digits.csv.gz").is_file()), None)
    if path is None:  # another layout of scikit-learn: its own loader
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    data = np.loadtxt(path, delimiter=",")  # what load_digits does with the same file
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


#: The generated sequence task: windows of a noisy sine, each labelled with the value that follows.
SINE_SERIES, SINE_STEPS, SINE_NOISE = 2000, 24, 0.05


def sine_windows(n: int = SINE_SERIES, steps: int = SINE_STEPS, noise: float = SINE_NOISE,
                 seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows of ``steps`` values (shaped (n, steps, 1)) and the next value of each (n,).

    Each window has its own amplitude (0.5-1.5), period (6-24 steps) and phase, plus gaussian noise
    on every value, so the last value alone predicts the next one poorly: a model must read the
    wave. Always the same data (fixed seed); the split is seeded by ``training.seed``.
    """
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.5, 1.5, (n, 1))
    period = rng.uniform(6.0, 24.0, (n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1))
    t = np.arange(steps + 1)[None, :]
    series = amp * np.sin(2 * np.pi * t / period + phase) + rng.normal(0.0, noise, (n, steps + 1))
    return series[:, :steps, None].astype(np.float32), series[:, steps].astype(np.float32)


def last_value_mse(data: PreparedData, split: str) -> float | None:
    """The naive forecast's error (the next value = the last one) on a split of a sequence task."""
    x = getattr(data, f"x_{split}")
    y = getattr(data, f"y_{split}")
    if data.task != "regression" or x.ndim != 3 or x.shape[-1] != 1 or len(x) == 0:
        return None
    pre = data.preprocessor
    if pre.clip_low is not None:  # clipped inputs cannot be turned back into raw values
        return None
    last = x[:, -1, 0] * pre.scale[-1, 0] + pre.shift[-1, 0]  # back to raw values
    return float(np.mean((last - y) ** 2))


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y of an .npz file; every way the file can be wrong is a SpecError on data.source.

    The headers are checked first (:func:`orchestrator.spec.datafile.inspect_npz`: keys, dtypes,
    shapes, sizes, without loading); a file that still fails to load (a bad CRC deep inside, memory
    running out) is reported the same way, never as a traceback.
    """
    import zipfile
    import zlib

    from orchestrator.spec.datafile import DataFileError, inspect_npz

    def fail(message: str, fix: str) -> SpecError:
        return SpecError([SpecIssue("data.source", message, value=path, fix=fix)])

    try:
        inspect_npz(path, ("x", "y"))
    except DataFileError as exc:
        raise fail(exc.message, exc.fix) from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except MemoryError:
        raise fail("the data set does not fit in memory", "use a smaller data set (or a sample of it)") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, zlib.error) as exc:
        raise fail(f"cannot read the .npz file: {str(exc)[:200] or type(exc).__name__}",
                   "write it again with numpy.savez(path, x=..., y=...)") from None
    if len(x) != len(y):
        raise fail(f"x has {len(x)} rows but y has {len(y)}", "give one label per row of x")
    if len(x) == 0:
        raise fail("the data set is empty", "give at least a few hundred rows")
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise fail("x and y must be numeric arrays", "convert them to float/int arrays")
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None, :, :]
    return x, y


def _labels(y: np.ndarray) -> tuple[np.ndarray, int, str]:
    flat = y.reshape(len(y), -1)
    if flat.shape[1] == 1 and (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
        labels = flat[:, 0].astype(np.int64)
        if labels.min() < 0:
            raise SpecError(
                [SpecIssue("data.source", "class labels must be 0, 1, 2, ...", value=int(labels.min()),
                           fix="map labels to non-negative integers")]
            )
        return labels, int(labels.max()) + 1, "classification"
    if flat.shape[1] != 1:
        raise SpecError(
            [SpecIssue("data.source", f"y has {flat.shape[1]} values per row; one label or one target is supported",
                       fix="give class labels (0, 1, 2, ...) rather than one-hot rows, or one regression target")]
        )
    return flat[:, 0].astype(np.float32), 0, "regression"


def stratified_split(
    y: np.ndarray, fractions: tuple[float, float], seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of (train, validation, test); each class keeps its share in every split."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    val_frac, test_frac = fractions
    train, val, test = [], [], []
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = int(round(len(idx) * test_frac))
        n_val = int(round(len(idx) * val_frac))
        test.append(idx[:n_test])
        val.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) for part in (train, val, test))  # type: ignore[return-value]


def prepare_data(spec: DataSpec, seed: int) -> PreparedData:
    """Load, clean, split (stratified for classes) and preprocess the spec's data set."""
    x, y = load_source(spec)
    x, y, report = clean(x, y, spec.cleaning)
    labels, num_classes, task = _labels(y)
    train, val, test = stratified_split(
        labels, (spec.validation_fraction, spec.test_fraction), seed, stratify=task == "classification"
    )
    if len(train) == 0 or len(val) == 0:
        raise SpecError(
            [SpecIssue("data", f"only {len(x)} usable rows after cleaning; too few to split",
                       fix="use a larger data set or smaller validation/test fractions")]
        )
    pre = fit_preprocessor(x[train], spec.preprocessing, spec.cleaning.clip_outliers_z)
    return PreparedData(
        x_train=pre.apply(x[train]),
        y_train=labels[train],
        x_val=pre.apply(x[val]),
        y_val=labels[val],
        x_test=pre.apply(x[test]),
        y_test=labels[test],
        sample_shape=tuple(x.shape[1:]),
        num_classes=num_classes,
        task=task,
        preprocessor=pre,
        cleaning=report,
        source=spec.source,
        train_index=train,
    )


def shard_indices(n: int, rank: int, world_size: int, epoch: int, seed: int) -> np.ndarray:
    """This rank's training sample indices for ``epoch``: a disjoint, equal-sized shard.

    Every epoch reshuffles all ``n`` samples with a generator seeded by (seed, epoch), the same
    on every rank, and deals them out round-robin; the last ``n % world_size`` are left out of
    that epoch so every rank runs the same number of steps (DDP needs that).
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world_size
    return perm[rank::world_size][:per_rank]


def eval_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's slice of an evaluation split (disjoint, together covering all n)."""
    return np.arange(rank, n, world_size)
