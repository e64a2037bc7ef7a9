"""Make the small stratified MNIST sample that ships inside the package (the default dataset)."""

from __future__ import annotations

from pathlib import Path

from lstmclf.data.dataset import read_arrays, stratified_take
from lstmclf.data.idx import encode_idx

NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def make_sample(src: str, dst: str | Path, n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> dict[str, int]:
    """Stratified subsets of a dataset's train and test files, written as gzipped IDX under `dst`."""
    arrays = read_arrays(src)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        keep, _ = stratified_take(arrays[f"{part}_labels"], n, s)
        for kind in ("images", "labels"):
            role = f"{part}_{kind}"
            tmp = out / (NAMES[role] + ".tmp")
            tmp.write_bytes(encode_idx(arrays[role][keep]))
            tmp.replace(out / NAMES[role])  # atomic: never a half-written sample file
        counts[part] = len(keep)
    return counts
