"""An MNIST-format dataset: four IDX files -> validated uint8 arrays -> train / val / test splits.

The test set is kept apart from the start; the validation set is a seeded, stratified hold-out
of the training files, so every run of the same config sees the same split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

from lstmclf import storage
from lstmclf.data.idx import parse_idx
from lstmclf.errors import DataError, StorageError

SAMPLE = "sample"  # data.path value that selects the sample bundled in the package

# Role -> file-name pattern. A prefix is allowed (EMNIST: "emnist-digits-train-images-idx3-ubyte"),
# as is the dotted variant some mirrors use ("train-images.idx3-ubyte").
FILES = {
    "train_images": r"train-images[-.]idx3-ubyte(\.gz)?",
    "train_labels": r"train-labels[-.]idx1-ubyte(\.gz)?",
    "test_images": r"t10k-images[-.]idx3-ubyte(\.gz)?",
    "test_labels": r"t10k-labels[-.]idx1-ubyte(\.gz)?",
}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) uint8 / int, in [0, num_classes)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: float  # pixel mean / std of the training split, in [0, 1] units
    std: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, *self.train.images.shape[1:])


def sample_dir() -> str:
    """Directory of the bundled stratified MNIST sample (6,000 train / 1,000 test images)."""
    return str(resources.files("lstmclf.data") / "sample")


def locate(uri: str) -> dict[str, str]:
    """Find the four IDX files under a directory or prefix -> role: full path."""
    fs, root = storage.resolve(sample_dir() if uri == SAMPLE else uri)
    try:
        names = storage.list_files(fs, root)
    except StorageError as e:
        raise DataError(f"dataset {uri}: {e}") from None
    found: dict[str, str] = {}
    for role, pattern in FILES.items():
        hits = [n for n in names if re.fullmatch(rf"(.*-)?{pattern}", n)]
        if not hits:
            raise DataError(f"dataset {uri}: no file matching {pattern.replace(chr(92), '')} (found: "
                            f"{', '.join(names[:8]) or 'nothing'})")
        if len(hits) > 1:
            raise DataError(f"dataset {uri}: several files for {role}: {', '.join(hits)}")
        found[role] = f"{root}/{hits[0]}"
    return found


def read_arrays(uri: str) -> dict[str, np.ndarray]:
    """Read and validate the four files; returns role -> array. Errors name the file."""
    fs, _ = storage.resolve(sample_dir() if uri == SAMPLE else uri)
    out = {}
    for role, path in locate(uri).items():
        try:
            raw = storage.read_bytes(fs, path)
        except StorageError as e:
            raise DataError(f"dataset {uri}: {e}") from None
        arr = parse_idx(raw, path)
        want_ndim = 3 if role.endswith("images") else 1
        if arr.dtype != np.uint8:
            raise DataError(f"{path}: element type {arr.dtype}, expected unsigned bytes (IDX code 0x08)")
        if arr.ndim != want_ndim:
            raise DataError(f"{path}: {arr.ndim} dimensions {list(arr.shape)}, expected {want_ndim}")
        if len(arr) == 0:
            raise DataError(f"{path}: holds no items")
        out[role] = arr
    for part in ("train", "test"):
        n_img, n_lab = len(out[f"{part}_images"]), len(out[f"{part}_labels"])
        if n_img != n_lab:
            raise DataError(f"dataset {uri}: {n_img} {part} images but {n_lab} {part} labels")
    if out["train_images"].shape[1:] != out["test_images"].shape[1:]:
        raise DataError(f"dataset {uri}: train images are {out['train_images'].shape[1:]} "
                        f"but test images are {out['test_images'].shape[1:]}")
    if min(out["train_images"].shape[1:]) < 8:
        raise DataError(f"dataset {uri}: images of {out['train_images'].shape[1:]} are smaller than 8x8")
    return out


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise DataError(f"{name}: label {int(labels[bad[0]])} at index {int(bad[0])} is out of range "
                        f"[0, {num_classes}) ({len(bad)} such labels)")


def stratified_take(labels: np.ndarray, total: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Choose `total` indices with class proportions kept (largest remainder) -> (taken, rest), sorted."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * total / len(labels)
    take = np.floor(quota).astype(np.int64)
    short = total - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    taken = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == c)
        taken.append(rng.permutation(idx)[:k])
    taken_idx = np.sort(np.concatenate(taken))
    mask = np.ones(len(labels), dtype=bool)
    mask[taken_idx] = False
    return taken_idx, np.flatnonzero(mask)


def build_splits(arrays: dict[str, np.ndarray], *, num_classes: int = 0, val_fraction: float = 0.1,
                 limit_train: int = 0, limit_test: int = 0, seed: int = 0, name: str = "dataset") -> Splits:
    """Validated arrays -> stratified train/val split of the training files and the (subset) test set."""
    tr_x, tr_y = arrays["train_images"], arrays["train_labels"]
    te_x, te_y = arrays["test_images"], arrays["test_labels"]
    n_cls = num_classes or int(tr_y.max()) + 1
    check_labels(tr_y, n_cls, f"{name} train labels")
    check_labels(te_y, n_cls, f"{name} test labels")
    if limit_train and limit_train < len(tr_y):
        keep, _ = stratified_take(tr_y, limit_train, seed)
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    if limit_test and limit_test < len(te_y):
        keep, _ = stratified_take(te_y, limit_test, seed + 1)
        te_x, te_y = te_x[keep], te_y[keep]
    n_val = round(val_fraction * len(tr_y))
    if n_val < 1 or n_val >= len(tr_y):
        raise DataError(f"{name}: {len(tr_y)} training images cannot give a validation split of {val_fraction}")
    val_idx, train_idx = stratified_take(tr_y, n_val, seed + 2)
    train = Split(np.ascontiguousarray(tr_x[train_idx]), np.ascontiguousarray(tr_y[train_idx]))
    # Pixel statistics of the training split only (no peeking at val/test), in [0, 1] units.
    px = train.images.reshape(-1)
    mean = float(px.mean(dtype=np.float64) / 255.0)
    std = float(px.std(dtype=np.float64) / 255.0) or 1.0
    return Splits(train=train, val=Split(tr_x[val_idx], tr_y[val_idx]), test=Split(te_x, te_y),
                  num_classes=n_cls, mean=mean, std=std)


def load_splits(uri: str = SAMPLE, *, num_classes: int = 0, val_fraction: float = 0.1, limit_train: int = 0,
                limit_test: int = 0, seed: int = 0) -> Splits:
    """Read, validate and split an MNIST-format dataset from a directory, URI or the bundled sample."""
    return build_splits(read_arrays(uri), num_classes=num_classes, val_fraction=val_fraction,
                        limit_train=limit_train, limit_test=limit_test, seed=seed, name=f"dataset {uri}")
