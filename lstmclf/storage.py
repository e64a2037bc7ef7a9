"""URIs -> (pyarrow filesystem, path): one place that knows local paths and object storage.

Ray Train/Tune take the pair as `RunConfig(storage_path=path, storage_filesystem=fs)`; the data
reader and the checkpoint loader use the same pair, so an `s3://` URI works wherever a path does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from lstmclf.errors import StorageError


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map a local path or URI to a filesystem and a path inside it (local paths made absolute)."""
    if not is_remote(uri):
        local = uri.removeprefix("file://")
        return pafs.LocalFileSystem(), str(Path(os.path.expanduser(local)).resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pafs.ArrowInvalid, OSError, ValueError) as e:
        raise StorageError(f"cannot open {uri}: {e}") from None
    return fs, path.rstrip("/")


def join(uri: str, *parts: str) -> str:
    """Join path components onto a local path or URI with '/'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(path, compression=None) as f:  # raw bytes: no guessing from ".gz"
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e}") from None


def list_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """Base names of the plain files directly under a directory (or prefix)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=False))
    except FileNotFoundError:
        raise StorageError(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot list {path}: {e}") from None
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
