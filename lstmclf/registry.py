"""Model registry on object storage (or a local directory): immutable versions and a champion pointer.

Layout under the registry URI, per model name:

    {name}/versions/000003/.claim          written first, create-only: no two registrations share a number
    {name}/versions/000003/checkpoint.pt   the checkpoint's files, copied (create-only) after their sha256
    {name}/versions/000003/config.yaml     was checked against the checkpoint's own manifest
    {name}/versions/000003/...
    {name}/versions/000003/version.json    written last: config, metrics, source, sha256 and size of each file
    {name}/versions/000003/decision.json   create-only, beside a version that scheduled retraining made:
                                           why it was promoted or rejected (lstmclf.retraining)
    {name}/champion.json                   the champion pointer and the champions before it, most recent
                                           first (for rollback); replaced only by a conditional write
    {name}/slots/{slot}.json               the state of one scheduled retraining (lstmclf.slots)

A version without version.json is incomplete and invisible. On S3 the conditional writes are S3's
own (`IfNoneMatch="*"`: create only; `IfMatch=<etag>`: replace only what was read; else 412); a
local directory does the same under flock(2). Loading checks every file against version.json.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from lstmclf import integrity, storage
from lstmclf.checkpoint import FILE, FILES, check_listing, checkpoint_files, model_from_checkpoint, state_from_bytes
from lstmclf.config import PLAIN_NAME, Config, load_yaml
from lstmclf.errors import CheckpointError, RegistryError, StorageError, WriteConflict
from lstmclf.models import Classifier

FORMAT = 1
VERSION_FILE = "version.json"
CHAMPION_FILE = "champion.json"
CLAIM_FILE = ".claim"
DECISION_FILE = "decision.json"
HISTORY = 50  # champions kept in the pointer for rollback
NAME = PLAIN_NAME
# What version.json holds, and of which type: readers rely on every one.
VERSION_FIELDS = {
    "name": str,
    "version": int,
    "created": str,
    "source": dict,
    "config": dict,
    "metrics": dict,
    "files": dict,
}


class _Precondition(Exception):
    """A conditional write lost: the object exists (create-only) or changed (if-match)."""


class _S3Store:
    """Objects under s3://bucket/prefix through boto3 (which retries throttling, 5xx and timeouts)."""

    def __init__(self, uri: str, endpoint: str) -> None:
        self.uri = uri
        self.bucket, self.prefix = storage.split_s3(uri)
        self.client = storage.s3_client(endpoint)

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _fail(self, e: Exception, what: str) -> StorageError:
        code = getattr(e, "response", {}).get("Error", {}).get("Code") or type(e).__name__
        return StorageError(f"registry {self.uri}: cannot {what} ({storage.redact(str(code))})")

    def get(self, rel: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))
            return r["Body"].read(), r["ETag"]
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._fail(e, f"read {rel}") from None
        except BotoCoreError as e:
            raise self._fail(e, f"read {rel}") from None

    def put(self, rel: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        cond = {"IfNoneMatch": "*"} if create_only else {"IfMatch": if_match} if if_match else {}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, **cond)["ETag"]
        except ClientError as e:
            # 412: the condition failed; 409: another conditional write to the key was in flight.
            if cond and e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                now = self.get(rel)
                if now is not None and now[0] == data:  # our own earlier attempt, retried after a lost reply
                    return now[1]
                raise _Precondition(rel) from None
            raise self._fail(e, f"write {rel}") from None
        except BotoCoreError as e:
            raise self._fail(e, f"write {rel}") from None

    def list(self, rel_prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = self._key("")
        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(rel_prefix)
            ):
                keys += [o["Key"].removeprefix(base) for o in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e, f"list {rel_prefix or '/'}") from None
        return sorted(keys)


class _LocalStore:
    """The same operations on a local directory; one flock(2) makes the conditional writes atomic
    between threads and processes of this machine."""

    def __init__(self, root: str) -> None:
        self.root = Path(storage.resolve(root)[1])
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry {root} is a file, not a directory")

    @staticmethod
    def _etag(data: bytes) -> str:
        return f'"{integrity.sha256(data)[:32]}"'

    def _path(self, rel: str) -> Path:
        if rel.startswith("/") or ".." in rel.split("/"):  # keys are relative and stay under the root
            raise RegistryError(f"registry {self.root}: refusing the key {rel[:200]!r}")
        return self.root / rel

    def get(self, rel: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(rel).read_bytes()
        except FileNotFoundError:
            return None
        return data, self._etag(data)

    def put(self, rel: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            now = self.get(rel)
            if (create_only and now is not None) or (if_match and (now is None or now[1] != if_match)):
                if now is not None and now[0] == data:  # as S3 does: the same bytes again are no conflict
                    return now[1]
                raise _Precondition(rel)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return self._etag(data)

    def list(self, rel_prefix: str) -> list[str]:
        # Walk only the directory the prefix ends in ("m/versions/" -> root/m/versions), not the registry.
        base = self._path(rel_prefix.rpartition("/")[0]) if "/" in rel_prefix else self.root
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(rel_prefix) and k != ".lock" and ".tmp-" not in k)


class Registry:
    """Versions and champions of named models under a local directory or s3://bucket/prefix."""

    def __init__(self, uri: str = "registry", endpoint: str = "") -> None:
        self.uri, self.endpoint = uri, endpoint
        self._backend: _S3Store | _LocalStore | None = None

    @property
    def _store(self) -> _S3Store | _LocalStore:
        if self._backend is None:
            if self.uri.startswith("s3://"):
                storage.check(self.uri, self.endpoint)  # no credentials, bad endpoint or bucket: one line
                self._backend = _S3Store(self.uri, self.endpoint)
            elif storage.is_remote(self.uri):
                raise RegistryError(f"registry {self.uri}: only local directories and s3:// are supported")
            else:
                self._backend = _LocalStore(self.uri)
        return self._backend

    def register(self, checkpoint_uri: str, name: str, *, source: str = "") -> int:
        """Copy a checkpoint (its files verified against its manifest first) into a new, immutable
        version of `name`; returns the version number. `source` names the experiment it came from
        (default: the checkpoint's parent directory). An s3:// checkpoint is read through the registry's
        endpoint. Only a checkpoint's own files (see `lstmclf.checkpoint.FILES`) are copied."""
        _check_name(name)
        checkpoint_uri = _source(checkpoint_uri)
        files = checkpoint_files(checkpoint_uri, self.endpoint)  # refuses names other than FILES
        # A version must load: weights-only (a pickle that would run code is refused here, not at load
        # time after it became the champion), rebuilt into its model, its config.yaml the one inside.
        state = state_from_bytes(files[FILE], f"{checkpoint_uri}/{FILE}")
        model_from_checkpoint(state)
        config = load_yaml(files.get("config.yaml", b""), f"checkpoint {checkpoint_uri}/config.yaml", CheckpointError)
        if config != state["config"]:
            raise CheckpointError(f"checkpoint {checkpoint_uri}: config.yaml is not the config inside {FILE}")
        metrics = _json(files.get("metrics.json", b""), f"checkpoint {checkpoint_uri}: metrics.json", CheckpointError)
        version = self._claim(name)
        where = f"{name}/versions/{version:06d}"
        experiment = source or checkpoint_uri.rsplit("/", 1)[0]
        manifest = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "created": _now(),
            "source": {"checkpoint": checkpoint_uri, "experiment": experiment},
            "config": config,
            "metrics": metrics,
            "files": {fname: integrity.entry(data) for fname, data in sorted(files.items())},
        }
        integrity.write_last(lambda fname, data: self._put_new(f"{where}/{fname}", data), files, VERSION_FILE, manifest)
        return version

    def names(self) -> list[str]:
        """Models with at least one complete version."""
        return sorted({k.split("/", 1)[0] for k in self._store.list("") if k.endswith(f"/{VERSION_FILE}")})

    def versions(self, name: str) -> list[int]:
        """Complete versions of `name`, oldest first."""
        _check_name(name)
        return sorted(
            int(k.split("/")[2]) for k in self._store.list(f"{name}/versions/") if k.endswith(f"/{VERSION_FILE}")
        )

    def show(self, name: str, version: int | str = "champion") -> dict[str, Any]:
        """The manifest of one version (config, metrics, source, files), `champion` the pointer's."""
        v = self._number(name, version)
        got = self._store.get(f"{name}/versions/{v:06d}/{VERSION_FILE}")
        if got is None:
            raise RegistryError(f"registry {self.uri}: {name} has no version {v} (versions: {self._listing(name)})")
        where = f"registry {self.uri}: {name} version {v}: {VERSION_FILE}"
        manifest = _json(got[0], where)
        wrong = [k for k, tp in VERSION_FIELDS.items() if not isinstance(manifest.get(k), tp)]
        if wrong:
            raise RegistryError(f"{where} lacks or mistypes {', '.join(wrong)} (corrupt)")
        return manifest

    def champion(self, name: str) -> tuple[int, str] | None:
        """(version, etag) of the champion pointer, or None; pass the etag to `promote` as `expected`."""
        got = self.champion_record(name)
        return None if got is None else (int(got[0]["version"]), got[1])

    def champion_record(self, name: str) -> tuple[dict[str, Any], str] | None:
        """The champion pointer as written (version, `previous` champions, who promoted when) and its
        etag, or None. Pointers written before the history existed have no `previous`."""
        _check_name(name)
        got = self._store.get(f"{name}/{CHAMPION_FILE}")
        if got is None:
            return None
        pointer = _json(got[0], f"registry {self.uri}: {name}/{CHAMPION_FILE}")
        if not isinstance(pointer.get("version"), int) or isinstance(pointer["version"], bool):
            raise RegistryError(f"registry {self.uri}: {name}/{CHAMPION_FILE} has no version number (corrupt)")
        previous = pointer.get("previous", [])
        if not isinstance(previous, list) or not all(isinstance(v, int) for v in previous):
            raise RegistryError(f"registry {self.uri}: {name}/{CHAMPION_FILE} has a corrupt 'previous' list")
        return pointer, got[1]

    def promote(self, name: str, version: int | str, expected: str | None = None) -> tuple[int, str]:
        """Make `version` the champion, provided the pointer is still what the caller read: `expected`
        is the etag from `champion()`, None when there was no champion. Of two concurrent promotions
        from the same reading exactly one wins; the other raises RegistryError. The champion replaced
        goes first in the pointer's `previous` (see `rollback`). Returns (version number, new etag),
        what `champion()` now returns."""
        v = self._number(name, version)
        if v not in self.versions(name):
            raise RegistryError(f"registry {self.uri}: {name} has no version {v} (versions: {self._listing(name)})")
        now = self.champion_record(name)
        if (now[1] if now else None) != expected:
            raise self._moved(name, now)
        previous = [int(now[0]["version"]), *now[0].get("previous", [])][:HISTORY] if now else []
        return v, self._replace_champion(name, {"version": v, "previous": previous}, expected)

    def rollback(self, name: str, expected: str | None = None) -> tuple[int, int]:
        """Put the previous champion back, by the same conditional write as `promote` (`expected`: the
        etag read, None to take the pointer as it is now). Returns (champion now, champion before).
        Refused when the pointer records no previous champion (never promoted twice, or written
        before the pointer kept its history)."""
        now = self.champion_record(name)
        if now is None:
            raise RegistryError(f"registry {self.uri}: {name} has no champion to roll back")
        if expected is not None and now[1] != expected:
            raise self._moved(name, now)
        current, previous = int(now[0]["version"]), now[0].get("previous", [])
        if not previous:
            raise RegistryError(f"registry {self.uri}: {name} records no champion before version {current}")
        pointer = {"version": int(previous[0]), "previous": previous[1:], "rolled_back_from": current}
        self._replace_champion(name, pointer, now[1])
        return int(previous[0]), current

    def find_version(self, name: str, checkpoint_uri: str) -> int | None:
        """The complete version registered from `checkpoint_uri`, if any (the newest): lets a retried
        job reuse its registration instead of making a second version of the same checkpoint."""
        uri = _source(checkpoint_uri)
        found = [v for v in self.versions(name) if self.show(name, v)["source"]["checkpoint"] == uri]
        return max(found, default=None)

    def write_decision(self, name: str, version: int, record: dict[str, Any]) -> str:
        """Write `decision.json` beside a version, create-only (written once, never replaced); returns
        where it is. Writing the same bytes again (a retried request) is not an error."""
        rel = f"{name}/versions/{version:06d}/{DECISION_FILE}"
        self._put_new(rel, json.dumps(record, indent=2).encode())
        return f"{self.uri.rstrip('/')}/{rel}"

    def decision(self, name: str, version: int) -> dict[str, Any] | None:
        """A version's decision.json, or None (registered by hand, or its job has not decided yet)."""
        got = self._store.get(f"{name}/versions/{version:06d}/{DECISION_FILE}")
        return None if got is None else _json(got[0], f"registry {self.uri}: {name} version {version}: {DECISION_FILE}")

    def read_record(self, name: str, rel: str) -> tuple[dict[str, Any], str] | None:
        """A JSON record under `{name}/` (e.g. `slots/x.json`) and its etag, or None."""
        _check_name(name)
        got = self._store.get(f"{name}/{rel}")
        return None if got is None else (_json(got[0], f"registry {self.uri}: {name}/{rel}"), got[1])

    def write_record(
        self, name: str, rel: str, record: dict[str, Any], *, create_only: bool = False, if_match: str | None = None
    ) -> str:
        """Write a JSON record under `{name}/` only if it does not exist (`create_only`) or is still
        what was read (`if_match`: its etag); returns the new etag. WriteConflict if another writer
        got there first."""
        _check_name(name)
        data = json.dumps(record, indent=2).encode()
        try:
            return self._store.put(f"{name}/{rel}", data, create_only=create_only, if_match=if_match)
        except _Precondition:
            raise WriteConflict(f"registry {self.uri}: {name}/{rel} was written by another run meanwhile") from None

    def _replace_champion(self, name: str, pointer: dict[str, Any], expected: str | None) -> str:
        pointer |= {
            "promoted_at": _now(),
            "by": f"{socket.gethostname()}:{os.getpid()}",
            "nonce": uuid.uuid4().hex,
        }  # distinct bytes, so distinct etags, for every write
        try:
            return self._store.put(
                f"{name}/{CHAMPION_FILE}", json.dumps(pointer).encode(), create_only=expected is None, if_match=expected
            )
        except _Precondition:
            raise self._moved(name, self.champion_record(name)) from None

    def _moved(self, name: str, now: tuple[dict[str, Any], str] | None) -> RegistryError:
        return RegistryError(
            f"registry {self.uri}: the champion of {name} changed since it was read (now "
            f"{'version ' + str(now[0]['version']) if now else 'none'}); read it again and retry"
        )

    def load(self, name: str, version: int | str = "champion") -> tuple[Classifier, Config, dict[str, Any]]:
        """(model in eval mode on CPU, its config, the checkpoint state) of a version; every file is
        checked against version.json, and the weights are unpickled with weights_only=True."""
        v = self._number(name, version)
        where = f"{name}/versions/{v:06d}"
        m = integrity.Manifest(
            f"registry {self.uri}: {name} version {v}",
            VERSION_FILE,
            CheckpointError,
            "(tampered or corrupt); refusing to load",
            refusal="refusing to load",
        )
        listed = self.show(name, v).get("files")
        if not isinstance(listed, dict):
            listed = {}  # refused just below: checkpoint.pt is not listed
        check_listing(m, listed, FILES)
        files: dict[str, bytes] = {}  # verified in memory: nothing is written anywhere
        for fname in listed:
            got = self._store.get(f"{where}/{fname}")
            if got is None:
                raise CheckpointError(f"registry {self.uri}: {name} version {v} lacks {fname}")
            integrity.verify(m, {fname: got[0]}, listed)
            files[fname] = got[0]
        state = state_from_bytes(files[FILE], f"{self.uri}/{where}/{FILE}")
        model, cfg = model_from_checkpoint(state)
        return model, cfg, state

    def _claim(self, name: str) -> int:
        taken = [int(k.split("/")[2]) for k in self._store.list(f"{name}/versions/") if k.count("/") >= 3]
        v = max(taken, default=0) + 1
        while True:
            try:
                self._store.put(
                    f"{name}/versions/{v:06d}/{CLAIM_FILE}",
                    json.dumps(
                        {"at": _now(), "by": f"{socket.gethostname()}:{os.getpid()}", "nonce": uuid.uuid4().hex}
                    ).encode(),
                    create_only=True,
                )
                return v
            except _Precondition:
                v += 1  # another registration took it

    def _put_new(self, rel: str, data: bytes) -> None:
        try:
            self._store.put(rel, data, create_only=True)
        except _Precondition:
            raise RegistryError(f"registry {self.uri}: {rel} exists; versions are immutable") from None

    def _number(self, name: str, version: int | str) -> int:
        _check_name(name)
        if version == "champion":
            now = self.champion(name)
            if now is None:
                raise RegistryError(
                    f"registry {self.uri}: {name} has no champion yet (versions: {self._listing(name)})"
                )
            return now[0]
        try:
            return int(str(version).removeprefix("v"))
        except ValueError:
            raise RegistryError(f"version {version!r} is not a number or 'champion'") from None

    def _listing(self, name: str) -> str:
        return ", ".join(map(str, self.versions(name))) or "none"


def _json(raw: bytes, where: str, error: type[Exception] = RegistryError) -> dict[str, Any]:
    """A JSON object stored in the registry or a checkpoint; `error` (one line) if it is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        raise error(f"{where} is not valid JSON (corrupt)") from None
    if not isinstance(value, dict):
        raise error(f"{where} holds a {type(value).__name__}, not a JSON object (corrupt)")
    return value


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise RegistryError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (at most 128)")


def _source(checkpoint_uri: str) -> str:
    """A checkpoint's directory as versions record it: a URI, or an absolute local path."""
    checkpoint_uri = checkpoint_uri.rstrip("/").removesuffix("/checkpoint.pt")
    return checkpoint_uri if storage.is_remote(checkpoint_uri) else storage.resolve(checkpoint_uri)[1]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
