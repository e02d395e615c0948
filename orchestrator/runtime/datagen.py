"""``orchestrator data generate``: write scikit-learn's digits as a data set of files (nothing downloaded).

Every kind holds the same 1,797 8x8 digits (``--copies K`` writes K copies, each after the first
with seeded gaussian noise of 0.5 on the 0-16 pixel scale, so every row is distinct and the set
grows to any size for benchmarks), dealt round-robin into ``--shards`` files:

* ``parquet`` / ``csv``: columns ``p0`` .. ``p63`` (float) and ``label`` (int);
* ``npz``: arrays ``x`` (n, 8, 8) float32 and ``y`` (n,) int64 per shard;
* ``npy``: one structured array per shard, fields ``x`` (8, 8) float32 and ``y`` int64;
* ``images``: one grayscale PNG per digit (pixel = value x 16), in ``DIR/<class>/`` folders
  (``--shards`` does not apply: every image is its own file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("parquet", "csv", "npz", "npy", "images")


def digits_copies(copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits ``copies`` times: x (n, 8, 8) float32 in 0-16, y (n,) int64."""
    from orchestrator.runtime.data import digits_arrays

    images, target = digits_arrays()
    base, labels = images.astype(np.float32), target.astype(np.int64)
    rng = np.random.default_rng(seed)
    xs = [base] + [np.clip(base + rng.normal(0, 0.5, base.shape).astype(np.float32), 0, 16) for _ in range(copies - 1)]
    return np.concatenate(xs), np.tile(labels, copies)


def generate(kind: str, directory: str | os.PathLike[str], *, shards: int = 4, copies: int = 1,
             seed: int = 0) -> dict[str, Any]:
    """Write the data set (a local path, or s3:// / gs:// through orchestrator.storage); returns what was
    written (files, rows, bytes)."""
    from orchestrator.storage import Storage, is_uri

    if is_uri(str(directory)):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result = generate(kind, tmp, shards=shards, copies=copies, seed=seed)
            Storage.open(str(directory)).put_dir(Path(tmp), "")
        return {**result, "directory": str(directory)}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    x, y = digits_copies(copies, seed)
    written: list[Path] = []
    if kind == "images":
        from PIL import Image

        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            folder = out / str(int(label))
            folder.mkdir(exist_ok=True)
            path = folder / f"digit-{i:07d}.png"
            Image.fromarray(np.clip(img * 16, 0, 255).astype(np.uint8), mode="L").save(path)
            written.append(path)
    else:
        for s in range(shards):
            sx, sy = x[s::shards], y[s::shards]
            path = out / f"part-{s:05d}.{kind}"
            if kind in ("parquet", "csv"):
                import pyarrow as pa

                table = pa.table({**{f"p{j}": sx.reshape(len(sx), -1)[:, j] for j in range(64)}, "label": sy})
                if kind == "parquet":
                    import pyarrow.parquet as pq

                    pq.write_table(table, path)
                else:
                    import pyarrow.csv as pcsv

                    pcsv.write_csv(table, path)
            elif kind == "npz":
                np.savez(path, x=sx, y=sy)
            else:
                rec = np.zeros(len(sx), dtype=[("x", np.float32, (8, 8)), ("y", np.int64)])
                rec["x"], rec["y"] = sx, sy
                np.save(path, rec)
            written.append(path)
    return {"kind": kind, "directory": str(out), "files": len(written), "rows": len(x),
            "bytes": sum(p.stat().st_size for p in written)}


#: The data the example specs in jobs/ read (relative to the folder holding jobs/), and how it is written:
#: ``orchestrator data generate KIND DIR --shards N`` for each.
EXAMPLE_DATA: dict[str, tuple[str, int]] = {
    "data/digits-parquet": ("parquet", 8),
    "data/digits-csv": ("csv", 8),
    "data/digits-npz": ("npz", 8),
    "data/digits-npy": ("npy", 8),
    "data/digits-png": ("images", 1),
}


def write_example_data(root: str | os.PathLike[str]) -> list[str]:
    """Write every data set the jobs/ examples read under ``root`` (the folder holding jobs/)."""
    for rel, (kind, shards) in EXAMPLE_DATA.items():
        generate(kind, Path(root) / rel, shards=shards)
    return list(EXAMPLE_DATA)
