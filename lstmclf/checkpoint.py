"""Checkpoint files: one `checkpoint.pt` (weights_only-loadable) plus readable config and metrics.

A checkpoint holds the unwrapped model's state_dict (never DDP's `module.` prefix), optimizer,
scheduler, epoch, the full config and what the data looked like (classes, shape, normalisation),
so it rebuilds its exact model without the original config file. `manifest.json` holds the sha256
of each file: a flipped byte that still unpickles (tensor data is not checksummed by torch.load)
is refused on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
import yaml

from lstmclf import storage
from lstmclf.config import Config
from lstmclf.errors import CheckpointError, ConfigError, StorageError
from lstmclf.models import Classifier, build_model

FILE = "checkpoint.pt"
FORMAT = 1


MANIFEST = "manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> None:
    """Write checkpoint.pt, config.yaml, metrics.json and their manifest.json into a local directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    files = {
        FILE: buf.getvalue(),
        "config.yaml": yaml.safe_dump(state["config"], sort_keys=False).encode(),
        "metrics.json": json.dumps(state.get("metrics", {}), indent=2).encode(),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    manifest = {"format": FORMAT, "files": {name: sha256(data) for name, data in files.items()}}
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, d / MANIFEST)  # written last: a directory without it is not a checkpoint


def upload_checkpoint(local_dir: str | Path, fs: pafs.FileSystem, dest: str) -> None:
    """Copy a checkpoint directory to storage with its manifest last: until the manifest is there
    nothing loads it (`load_checkpoint`, resume checks, the registry), so a crash or an outage
    mid-upload never leaves a half-written checkpoint that counts. Each file is retried."""
    storage.upload_dir(local_dir, fs, dest, last=(MANIFEST,))


def checkpoint_files(uri: str, endpoint: str = "") -> dict[str, bytes]:
    """Every file its manifest lists (manifest.json included) -> bytes, each checked against its sha256."""
    storage.check(uri, endpoint)
    fs, directory = storage.resolve(uri, endpoint)
    try:
        raw_manifest = storage.read_bytes(fs, f"{directory}/{MANIFEST}")
        manifest = json.loads(raw_manifest)
        listed = manifest["files"]
        files = {name: storage.read_bytes(fs, f"{directory}/{name}") for name in listed}
    except StorageError as e:
        raise CheckpointError(f"checkpoint {uri}: {e}") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {uri}: {MANIFEST} is corrupt") from None
    for name, data in files.items():
        if sha256(data) != listed[name]:
            raise CheckpointError(f"checkpoint {uri}: {name} does not match the sha256 in its {MANIFEST} "
                                  "(tampered or corrupt)")
    return {**files, MANIFEST: raw_manifest}


def load_checkpoint(uri: str | Path, endpoint: str = "") -> dict[str, Any]:
    """Load a checkpoint (a directory holding checkpoint.pt, or the file; local or URI): its sha256
    is checked against the manifest, then it is unpickled with weights_only=True. `endpoint` is
    the S3 endpoint for s3:// URIs (see `lstmclf.storage.endpoint_url`)."""
    uri = str(uri)
    storage.check(uri, endpoint)
    fs, path = storage.resolve(uri, endpoint)
    directory = path.rsplit("/", 1)[0] if path.endswith(".pt") else path
    path = f"{directory}/{FILE}"
    try:
        manifest = json.loads(storage.read_bytes(fs, f"{directory}/{MANIFEST}"))
        raw = storage.read_bytes(fs, path)
    except StorageError as e:
        raise CheckpointError(f"checkpoint {uri}: {e}") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {uri}: {MANIFEST} is corrupt") from None
    expected = manifest.get("files", {}).get(FILE) if isinstance(manifest, dict) else None
    if sha256(raw) != expected:
        raise CheckpointError(f"checkpoint {path} does not match the sha256 in its {MANIFEST} (tampered or corrupt)")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint: {first[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not an lstmclf checkpoint (format {FORMAT})")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> tuple[Classifier, Config]:
    """Rebuild the exact model of a loaded checkpoint (eval mode, CPU) and its config."""
    try:
        cfg = Config.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from None
    # The backbone's weights come from the checkpoint, not from the original pretrained file.
    model = build_model(cfg.override({"model.pretrained": ""}).model, state["data"]["num_classes"],
                        tuple(state["data"]["image_shape"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its model: {str(e).splitlines()[0]}") from None
    return model.eval(), cfg
