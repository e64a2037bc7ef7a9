"""An MNIST-format dataset: four IDX files -> validated uint8 arrays -> train / val / test splits.

The test set is kept apart from the start; the validation set is a seeded, stratified hold-out
of the training files, so every run of the same config sees the same split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from lstmclf import integrity, storage
from lstmclf.data.idx import parse_idx
from lstmclf.errors import DataError, StorageError

SAMPLE = "sample"  # data.path value that selects the sample bundled in the package
MANIFEST = "manifest.json"  # beside prepared data (jobs/prepare_data.py): counts, shapes, sha256 of each file

# Role -> file-name pattern. A prefix is allowed (EMNIST: "emnist-digits-train-images-idx3-ubyte"),
# as is the dotted variant some mirrors use ("train-images.idx3-ubyte").
FILES = {
    "train_images": r"train-images[-.]idx3-ubyte(\.gz)?",
    "train_labels": r"train-labels[-.]idx1-ubyte(\.gz)?",
    "test_images": r"t10k-images[-.]idx3-ubyte(\.gz)?",
    "test_labels": r"t10k-labels[-.]idx1-ubyte(\.gz)?",
}
# What a manifest may list, as its refusal of any other name says.
LISTABLE = f"a dataset file ({', '.join(p.replace(chr(92), '') for p in FILES.values())}, with any prefix)"


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


def _listing(uri: str, endpoint: str) -> tuple[Any, str, list[str]]:
    fs, root = storage.resolve(sample_dir() if uri == SAMPLE else uri, endpoint)
    try:
        return fs, root, storage.list_files(fs, root)
    except StorageError as e:
        raise DataError(f"dataset {uri}: {e}") from None


def _is_role(name: str, role: str) -> bool:
    return re.fullmatch(rf"(.*-)?{FILES[role]}", name) is not None


def _is_dataset_file(name: str) -> bool:
    return any(_is_role(name, role) for role in FILES)


def _match(uri: str, root: str, names: list[str], roles: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for role in roles:
        pattern = FILES[role]
        hits = [n for n in names if _is_role(n, role)]
        if not hits:
            raise DataError(
                f"dataset {uri}: no file matching {pattern.replace(chr(92), '')} (found: "
                f"{', '.join(names[:8]) or 'nothing'})"
            )
        if len(hits) > 1:
            raise DataError(f"dataset {uri}: several files for {role}: {', '.join(hits)}")
        found[role] = f"{root}/{hits[0]}"
    return found


def read_files(
    uri: str, endpoint: str = "", roles: tuple[str, ...] = tuple(FILES)
) -> dict[str, tuple[str, bytes, np.ndarray]]:
    """Read and validate the four files (or only `roles` of them) -> role: (file name, raw bytes,
    array). Errors name the file.

    Where a `manifest.json` lies beside them (prepared data), each file must match its sha256 and
    shape there: a corrupt or replaced object is refused before it is parsed."""
    storage.check(uri, endpoint)  # s3://: one clear line for no credentials, endpoint or bucket
    fs, root, names = _listing(uri, endpoint)
    m = integrity.Manifest(f"dataset {uri}", MANIFEST, DataError, "(corrupt or replaced)")
    listed = _read_manifest(fs, root, m) if MANIFEST in names else None
    out = {}
    for role, path in _match(uri, root, names, roles).items():
        try:
            raw = storage.read_bytes(fs, path)
        except StorageError as e:
            raise DataError(f"dataset {uri}: {e}") from None
        name = path.rsplit("/", 1)[1]
        entry = None
        if listed is not None:
            integrity.verify(m, {name: raw}, listed)
            entry = listed[name]
        arr = parse_idx(raw, path)
        want_ndim = 3 if role.endswith("images") else 1
        if arr.dtype != np.uint8:
            raise DataError(f"{path}: element type {arr.dtype}, expected unsigned bytes (IDX code 0x08)")
        if arr.ndim != want_ndim:
            raise DataError(f"{path}: {arr.ndim} dimensions {list(arr.shape)}, expected {want_ndim}")
        if len(arr) == 0:
            raise DataError(f"{path}: holds no items")
        if entry is not None and entry.get("shape") != list(arr.shape):
            raise DataError(
                f"dataset {uri}: {name} has shape {list(arr.shape)}, its {MANIFEST} says {entry.get('shape')}"
            )
        out[role] = (name, raw, arr)
    parts = [part for part in ("train", "test") if f"{part}_images" in out and f"{part}_labels" in out]
    for part in parts:
        n_img, n_lab = len(out[f"{part}_images"][2]), len(out[f"{part}_labels"][2])
        if n_img != n_lab:
            raise DataError(f"dataset {uri}: {n_img} {part} images but {n_lab} {part} labels")
    shapes = {part: out[f"{part}_images"][2].shape[1:] for part in parts}
    if len(set(shapes.values())) > 1:
        raise DataError(f"dataset {uri}: train images are {shapes['train']} but test images are {shapes['test']}")
    for shape in set(shapes.values()):
        if min(shape) < 8:
            raise DataError(f"dataset {uri}: images of {shape} are smaller than 8x8")
    return out


def read_arrays(uri: str, endpoint: str = "") -> dict[str, np.ndarray]:
    """Read and validate the four files; returns role -> array. Errors name the file."""
    return {role: arr for role, (_, _, arr) in read_files(uri, endpoint).items()}


def load_test(uri: str = SAMPLE, *, num_classes: int, endpoint: str = "") -> Split:
    """Only the test split of a dataset (the two t10k files), read and validated as `load_splits`
    does (manifest included) without reading the training files; labels must lie in [0, num_classes)."""
    files = read_files(uri, endpoint, roles=("test_images", "test_labels"))
    labels = files["test_labels"][2]
    check_labels(labels, num_classes, f"dataset {uri} test labels")
    return Split(files["test_images"][2], labels)


def dataset_digest(uri: str, endpoint: str = "", roles: tuple[str, ...] = tuple(FILES)) -> dict[str, Any]:
    """What identifies the data a decision was made on: the sha256 of its manifest.json (prepared data
    lists every file's sha256 there), else the sha256 of each file of `roles`, read for the purpose."""
    fs, root, names = _listing(uri, endpoint)
    try:
        if MANIFEST in names:
            return {MANIFEST: integrity.sha256(storage.read_bytes(fs, f"{root}/{MANIFEST}"))}
        files = _match(uri, root, names, roles).values()
        return {"files": {p.rsplit("/", 1)[1]: integrity.sha256(storage.read_bytes(fs, p)) for p in files}}
    except StorageError as e:
        raise DataError(f"dataset {uri}: {e}") from None


def _read_manifest(fs: Any, root: str, m: integrity.Manifest) -> dict[str, dict[str, Any]]:
    """manifest.json -> file name: its entry (role, sha256, bytes, shape). Only plain names of dataset
    files may be listed; an entry that is not a mapping lists nothing."""
    try:
        manifest = json.loads(storage.read_bytes(fs, f"{root}/{MANIFEST}"))
    except StorageError as e:
        raise DataError(f"{m.owner}: {e}") from None
    except ValueError:
        raise m.fail("is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise m.fail("has no 'files' mapping")
    integrity.check_names(m, manifest["files"], _is_dataset_file, LISTABLE)
    return {name: entry for name, entry in manifest["files"].items() if isinstance(entry, dict)}


def prepare_dataset(
    src: str, dest: str, *, endpoint: str = "", num_classes: int = 0, force: bool = False
) -> tuple[dict[str, Any], bool]:
    """Validate the four IDX files at `src` and copy them, as they are, to `dest` (a directory or
    s3:// prefix) with a manifest of counts, shapes and sha256 per file, written last.

    Returns (manifest, uploaded); a `dest` already holding the same files is left as it is, one
    holding other data is refused unless `force`."""
    files = read_files(src, endpoint)
    n_cls = class_count({role: arr for role, (_, _, arr) in files.items()}, num_classes, str(src))
    manifest = {
        "format": 1,
        "num_classes": n_cls,
        "image_shape": list(files["train_images"][2].shape[1:]),
        "counts": {part: len(files[f"{part}_labels"][2]) for part in ("train", "test")},
        "files": {
            name: {"role": role, **integrity.entry(raw), "shape": list(arr.shape)}
            for role, (name, raw, arr) in files.items()
        },
    }
    storage.check(dest, endpoint)
    fs, root = storage.resolve(dest, endpoint)
    try:
        old = json.loads(storage.read_bytes(fs, f"{root}/{MANIFEST}"))
    except StorageError:
        old = None  # nothing prepared there yet
    except ValueError:
        old = {}
    if old is not None and not force:
        if isinstance(old, dict) and old.get("files") == manifest["files"]:
            return old, False
        raise DataError(f"{dest} already holds another dataset ({MANIFEST}); choose another destination or --force")
    # Dataset files there that the new manifest does not list (train-images-idx3-ubyte.gz when the
    # new set is raw) would make two candidates for one role: they go; any other file stays.
    old_listed = old.get("files") if isinstance(old, dict) and isinstance(old.get("files"), dict) else {}
    try:
        present = storage.list_files(fs, root)
    except StorageError:
        present = []  # nothing there yet
    stale = [
        n for n in present if n not in manifest["files"] and n != MANIFEST and (n in old_listed or _is_dataset_file(n))
    ]
    if stale and old is None and not force:
        raise DataError(
            f"{dest} already holds IDX files ({', '.join(stale)}) without a {MANIFEST}; "
            "choose another destination or --force"
        )
    for name in stale:  # before the new files: the new manifest, written last, lists only those
        storage.delete_file(fs, f"{root}/{name}")
    integrity.write_last(
        lambda name, data: storage.write_file(fs, f"{root}/{name}", data),
        {name: raw for name, raw, _arr in files.values()},
        MANIFEST,
        manifest,
    )
    return manifest, True


def class_count(arrays: dict[str, np.ndarray], num_classes: int, name: str) -> int:
    """The number of classes (`num_classes`, else inferred from the training labels, which must then
    be 0..K-1 with every class present), with the train and test labels checked against it."""
    n_cls = num_classes or inferred_classes(arrays["train_labels"], f"{name} train labels")
    check_labels(arrays["train_labels"], n_cls, f"{name} train labels")
    check_labels(arrays["test_labels"], n_cls, f"{name} test labels")
    return n_cls


def inferred_classes(labels: np.ndarray, name: str) -> int:
    """K when the labels are exactly 0..K-1, each present; otherwise DataError naming the first label
    past a gap (a stray label 200 among 0-9 would make a 201-class model with 190 empty classes)."""
    present = np.unique(labels)
    if present[-1] + 1 == len(present):
        return len(present)
    missing = int(np.flatnonzero(present != np.arange(len(present)))[0])  # sorted: the first class skipped
    label = int(present[missing])
    index = int(np.flatnonzero(labels == label)[0])
    raise DataError(
        f"{name}: label {label} at index {index} leaves class {missing} without images "
        f"({int(present[-1]) + 1 - len(present)} empty classes below {int(present[-1]) + 1}); labels must be "
        "0..K-1 with every class present, or set data.num_classes"
    )


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise DataError(
            f"{name}: label {int(labels[bad[0]])} at index {int(bad[0])} is out of range "
            f"[0, {num_classes}) ({len(bad)} such labels)"
        )


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


def build_splits(
    arrays: dict[str, np.ndarray],
    *,
    num_classes: int = 0,
    val_fraction: float = 0.1,
    limit_train: int = 0,
    limit_test: int = 0,
    seed: int = 0,
    name: str = "dataset",
) -> Splits:
    """Validated arrays -> stratified train/val split of the training files (no val split when
    `val_fraction` is 0) and the (subset) test set."""
    tr_x, tr_y = arrays["train_images"], arrays["train_labels"]
    te_x, te_y = arrays["test_images"], arrays["test_labels"]
    n_cls = class_count(arrays, num_classes, name)
    if limit_train and limit_train < len(tr_y):
        keep, _ = stratified_take(tr_y, limit_train, seed)
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    if limit_test and limit_test < len(te_y):
        keep, _ = stratified_take(te_y, limit_test, seed + 1)
        te_x, te_y = te_x[keep], te_y[keep]
    n_val = round(val_fraction * len(tr_y))
    if (val_fraction > 0 and n_val < 1) or n_val >= len(tr_y):
        raise DataError(f"{name}: {len(tr_y)} training images cannot give a validation split of {val_fraction}")
    val_idx, train_idx = stratified_take(tr_y, n_val, seed + 2)  # n_val 0: an empty val split, all train
    train = Split(np.ascontiguousarray(tr_x[train_idx]), np.ascontiguousarray(tr_y[train_idx]))
    # Pixel statistics of the training split only (no peeking at val/test), in [0, 1] units.
    px = train.images.reshape(-1)
    mean = float(px.mean(dtype=np.float64) / 255.0)
    std = float(px.std(dtype=np.float64) / 255.0) or 1.0
    return Splits(
        train=train,
        val=Split(tr_x[val_idx], tr_y[val_idx]),
        test=Split(te_x, te_y),
        num_classes=n_cls,
        mean=mean,
        std=std,
    )


def load_splits(
    uri: str = SAMPLE,
    *,
    num_classes: int = 0,
    val_fraction: float = 0.1,
    limit_train: int = 0,
    limit_test: int = 0,
    seed: int = 0,
    endpoint: str = "",
) -> Splits:
    """Read, validate and split an MNIST-format dataset from a directory, URI or the bundled sample
    (`endpoint`: the S3 endpoint for s3:// URIs, see `lstmclf.storage.endpoint_url`)."""
    return build_splits(
        read_arrays(uri, endpoint),
        num_classes=num_classes,
        val_fraction=val_fraction,
        limit_train=limit_train,
        limit_test=limit_test,
        seed=seed,
        name=f"dataset {uri}",
    )
