"""Checkpoint files: one `checkpoint.pt` (weights_only-loadable) plus readable config and metrics.

A checkpoint holds the unwrapped model's state_dict as `model` (never DDP's `module.` prefix; with
`train.ema_decay`, the weight average, and the raw weights as `train_model` for resuming), optimizer,
scheduler, epoch, the full config and what the data looked like (classes, shape, normalisation),
so it rebuilds its exact model without the original config file. `manifest.json` holds the sha256
of each file (see `lstmclf.integrity`): a flipped byte that still unpickles (tensor data is not
checksummed by torch.load) is refused on load.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
import yaml

from lstmclf import integrity, storage
from lstmclf.config import Config
from lstmclf.errors import CheckpointError, ConfigError, StorageError
from lstmclf.models import Classifier, build_model

FILE = "checkpoint.pt"
FORMAT = 1
MANIFEST = "manifest.json"
LISTED = (FILE, "config.yaml", "metrics.json")  # what a manifest may list: plain names, never paths
FILES = (*LISTED, MANIFEST)  # every file of a checkpoint


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> None:
    """Write checkpoint.pt, config.yaml, metrics.json and their manifest.json into a local directory."""
    d = Path(directory)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    files = {
        FILE: buf.getvalue(),
        "config.yaml": yaml.safe_dump(state["config"], sort_keys=False).encode(),
        "metrics.json": json.dumps(state.get("metrics", {}), indent=2).encode(),
    }
    manifest = {"format": FORMAT, "files": {name: integrity.sha256(data) for name, data in files.items()}}
    # The manifest last: a directory without it is not a checkpoint.
    integrity.write_last(lambda name, data: storage.write_bytes(str(d / name), data), files, MANIFEST, manifest)


def upload_checkpoint(local_dir: str | Path, fs: pafs.FileSystem, dest: str) -> None:
    """Copy a checkpoint directory to storage with its manifest last: until the manifest is there
    nothing loads it (`load_checkpoint`, resume checks, the registry), so a crash or an outage
    mid-upload never leaves a half-written checkpoint that counts. Each file is retried."""
    storage.upload_dir(local_dir, fs, dest, last=(MANIFEST,))


def checkpoint_files(uri: str, endpoint: str = "") -> dict[str, bytes]:
    """Every file its manifest lists (manifest.json included) -> bytes, each checked against its sha256.
    `uri` is the checkpoint directory or a `.pt` file in it (local path or URI)."""
    return _read_checkpoint(uri, endpoint)[0]


def load_checkpoint(uri: str | Path, endpoint: str = "") -> dict[str, Any]:
    """Load a checkpoint (a directory holding checkpoint.pt, or the file; local or URI): every file is
    checked against the manifest's sha256, then checkpoint.pt is unpickled with weights_only=True.
    `endpoint` is the S3 endpoint for s3:// URIs (see `lstmclf.storage.endpoint_url`)."""
    files, shown = _read_checkpoint(str(uri), endpoint)
    return state_from_bytes(files[FILE], f"{shown}/{FILE}")


def state_from_bytes(raw: bytes, where: str) -> dict[str, Any]:
    """checkpoint.pt's bytes, already checked against a manifest -> its state, unpickled with
    weights_only=True (no code runs); `where` names the file in the one-line errors."""
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        text = str(e).strip()
        if text.startswith("Weights only load failed"):
            # torch's refusal opens with how to load the file anyway; what matters is what it refused.
            what = next((ln for ln in text.splitlines() if "GLOBAL" in ln), "")
            what = (
                re.sub(r"^.*WeightsUnpickler error: ", "", what.strip()).split(". ")[0].split(" was not")[0].rstrip(".")
            )
            raise CheckpointError(
                f"checkpoint {where} is refused: it holds Python objects other than tensors and plain values "
                f"({what[:120] or 'not allowed by weights_only'}), which unpickling could run as code"
            ) from None
        first = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"checkpoint {where} is corrupt or not a checkpoint: {first[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"checkpoint {where} is not an lstmclf checkpoint (format {FORMAT})")
    return state


def _read_checkpoint(uri: str, endpoint: str) -> tuple[dict[str, bytes], str]:
    """-> (name: bytes of every file, manifest.json included, each checked against its sha256; where
    messages point: the absolute local directory, or the directory's URI)."""
    directory_uri = uri.rstrip("/")
    if directory_uri.endswith(".pt"):  # the checkpoint file -> its directory
        directory_uri = directory_uri.rsplit("/", 1)[0]
    storage.check(directory_uri, endpoint)
    fs, directory = storage.resolve(directory_uri, endpoint)
    shown = directory_uri if storage.is_remote(directory_uri) else directory  # resolve() drops the scheme
    m = integrity.Manifest(f"checkpoint {shown}", MANIFEST, CheckpointError, "(tampered or corrupt)", sep="/")
    try:
        raw_manifest = storage.read_bytes(fs, f"{directory}/{MANIFEST}")
        listed = _listed(raw_manifest, m)
        files = {name: storage.read_bytes(fs, f"{directory}/{name}") for name in listed}
    except StorageError as e:
        raise CheckpointError(f"checkpoint {uri}: {e}") from None
    integrity.verify(m, files, listed)
    return {**files, MANIFEST: raw_manifest}, shown


def _listed(raw_manifest: bytes, m: integrity.Manifest) -> dict[str, str]:
    """manifest.json -> file name: sha256, the names only those a checkpoint is made of."""
    try:
        listed = json.loads(raw_manifest)["files"]
    except (ValueError, KeyError, TypeError):
        listed = None
    if not isinstance(listed, dict) or not all(isinstance(h, str) for h in listed.values()):
        raise m.fail("is corrupt")
    check_listing(m, listed)
    return listed


def check_listing(m: integrity.Manifest, names: Iterable[str], allowed: tuple[str, ...] = LISTED) -> None:
    """Refuse a listing of a file other than `allowed` (by default what a checkpoint's manifest may
    list), or one without checkpoint.pt: a listed path such as ../x would be read from, or copied
    to, outside the checkpoint."""
    what = f"a checkpoint file ({', '.join(allowed)})"
    integrity.check_names(m, names, allowed.__contains__, what, required=(FILE,))


def model_from_checkpoint(state: dict[str, Any]) -> tuple[Classifier, Config]:
    """Rebuild the exact model of a loaded checkpoint (eval mode, CPU) and its config."""
    try:
        cfg = Config.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from None
    # The backbone's weights come from the checkpoint, not from the original pretrained file.
    model = build_model(
        cfg.override({"model.pretrained": ""}).model, state["data"]["num_classes"], tuple(state["data"]["image_shape"])
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its model: {str(e).splitlines()[0]}") from None
    return model.eval(), cfg
