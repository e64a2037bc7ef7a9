"""Small, valid inputs that tests then break on purpose: an MNIST-format dataset, a checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lstmclf.data import encode_idx
from lstmclf.data.sample import NAMES


def write_dataset(
    d: Path,
    n_train: int = 40,
    n_test: int = 20,
    hw: tuple[int, int] = (28, 28),
    classes: int = 4,
    seed: int = 0,
    **replace: bytes,
) -> dict[str, np.ndarray]:
    """Four gzipped IDX files of random images, labels cycling through `classes`; `replace` swaps a
    file's bytes by role. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % classes).astype(np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for role, arr in arrays.items():
        (d / NAMES[role]).write_bytes(replace.get(role, encode_idx(arr)))
    return arrays


def write_checkpoint(d: Path, *, seed: int = 0, val_acc: float | None = None, config_text: bytes | None = None):
    """A real checkpoint of a tiny model (lstmclf.checkpoint.save_checkpoint); returns the model.
    `config_text` replaces its config.yaml, with the manifest made to match (what a forger or a broken
    writer leaves)."""
    import torch

    from lstmclf.checkpoint import save_checkpoint
    from lstmclf.config import Config
    from lstmclf.models import build_model

    torch.manual_seed(seed)
    cfg = Config().override({"model.width": 4, "model.hidden": 8, "model.lstm_layers": 1})
    model = build_model(cfg.model, 10, (1, 28, 28))
    metrics = {} if val_acc is None else {"epoch": 3, "val_acc": val_acc}
    data = {"num_classes": 10, "image_shape": [1, 28, 28], "mean": 0.13, "std": 0.31}
    state = {"model": model.state_dict(), "epoch": 2, "config": cfg.to_dict(), "metrics": metrics, "data": data}
    save_checkpoint(d, state)
    if config_text is not None:
        (d / "config.yaml").write_bytes(config_text)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["files"]["config.yaml"] = hashlib.sha256(config_text).hexdigest()
        (d / "manifest.json").write_text(json.dumps(manifest))
    return model.eval()
