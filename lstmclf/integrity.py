"""One integrity mechanism for everything stored as a few files plus a manifest of their sha256.

Prepared datasets (`manifest.json`), checkpoints (`manifest.json`) and registry versions
(`version.json`) are each written files first, manifest last: until the manifest is there nothing
counts, so a write cut off midway never passes for a whole one. A reader checks every file it uses
against the manifest before using it. The names a manifest lists are joined to its directory, so
only plain names of the kind expected pass: `../x` or `/etc/x` would be read (or copied) from
outside it.

Each user keeps its own words (which error, what its manifest is called, why a file may not match);
`Manifest` carries them, so every message has one shape and is written once, here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Manifest:
    """One manifest as its errors name it.

    `owner` begins every message ("checkpoint /runs/m/epoch_0001"), `name` is the manifest's file
    name, `error` the exception raised, `damage` ends a digest mismatch ("(tampered or corrupt)"),
    `sep` joins the owner to a listed file's name ("/" where the owner is a directory) and
    `refusal` ends the refusal of a listed name."""

    owner: str
    name: str
    error: type[Exception]
    damage: str
    sep: str = ": "
    refusal: str = "refusing it"

    def fail(self, problem: str) -> Exception:
        """`{owner}: {name} {problem}` as the owner's error: a problem with the manifest itself."""
        return self.error(f"{self.owner}: {self.name} {problem}")


def sha256(data: bytes) -> str:
    """The hex sha256 of `data`, as every manifest lists it."""
    return hashlib.sha256(data).hexdigest()


def entry(data: bytes) -> dict[str, Any]:
    """A file's entry in a dataset manifest or a version.json: its sha256 and size."""
    return {"sha256": sha256(data), "bytes": len(data)}


def digest(listed: Any) -> Any:
    """The sha256 a manifest entry gives: a checkpoint's bare digest, or the "sha256" of a dataset's
    or a version's entry. Anything else comes back as it is and matches no file."""
    return listed.get("sha256") if isinstance(listed, dict) else listed


def write_last(
    put: Callable[[str, bytes], None], files: Mapping[str, bytes], name: str, manifest: Mapping[str, Any]
) -> None:
    """`put(file name, bytes)` each of `files`, then the manifest as JSON under `name`: a reader that
    finds the manifest finds every file it lists."""
    for fname, data in files.items():
        put(fname, data)
    put(name, json.dumps(manifest, indent=2).encode())


def is_plain(name: str) -> bool:
    """Whether `name` is a bare file name, one that stays inside the directory it is joined to."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def check_names(
    m: Manifest, names: Iterable[str], allowed: Callable[[str], bool], what: str, required: Iterable[str] = ()
) -> None:
    """Refuse a listing of a name that is not plain or not `allowed` (`what` describes the allowed
    ones in the error), and one that lacks any of `required`."""
    names = list(names)
    for fname in names:
        if not (is_plain(fname) and allowed(fname)):
            raise m.fail(f"lists {fname[:100]!r}, not {what}; {m.refusal}")
    for fname in required:
        if fname not in names:
            raise _unlisted(m, fname)


def verify(m: Manifest, files: Mapping[str, bytes], listed: Mapping[str, Any]) -> None:
    """Refuse the first of `files` (name -> bytes) that `listed` (the manifest's name -> entry) does
    not list, or whose sha256 is not the one listed."""
    for fname, data in files.items():
        if fname not in listed:
            raise _unlisted(m, fname)
        if sha256(data) != digest(listed[fname]):
            raise m.error(f"{m.owner}{m.sep}{fname} does not match the sha256 in its {m.name} {m.damage}")


def _unlisted(m: Manifest, fname: str) -> Exception:
    return m.fail(f"does not list {fname}")
