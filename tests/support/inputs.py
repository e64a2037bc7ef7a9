"""Small, valid inputs that tests then break on purpose: an MNIST-format dataset, a checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lstmclf.data import encode_idx
from lstmclf.data.sample import NAMES


def write_dataset(d: Path, n_train: int = 40, n_test: int = 20, classes: int = 4, seed: int = 0) -> dict:
    """Four gzipped IDX files of random 28x28 images, labels cycling through `classes`; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % classes).astype(np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for role, arr in arrays.items():
        (d / NAMES[role]).write_bytes(encode_idx(arr))
    return arrays


def write_checkpoint(d: Path, *, config_text: bytes | None = None) -> None:
    """A real checkpoint of a tiny model (lstmclf.checkpoint.save_checkpoint); `config_text` replaces
    its config.yaml, with the manifest made to match (what a forger or a broken writer leaves)."""
    from lstmclf.checkpoint import save_checkpoint
    from lstmclf.config import Config
    from lstmclf.models import build_model

    cfg = Config().override({"model.width": 4, "model.hidden": 8})
    model = build_model(cfg.model, 10, (1, 28, 28))
    data = {"num_classes": 10, "image_shape": [1, 28, 28], "mean": 0.13, "std": 0.31}
    save_checkpoint(d, {"model": model.state_dict(), "epoch": 0, "config": cfg.to_dict(), "metrics": {}, "data": data})
    if config_text is not None:
        (d / "config.yaml").write_bytes(config_text)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["files"]["config.yaml"] = hashlib.sha256(config_text).hexdigest()
        (d / "manifest.json").write_text(json.dumps(manifest))
