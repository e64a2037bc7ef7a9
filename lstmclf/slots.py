"""One scheduled retraining per slot: a claim with a lease, kept in the registry beside the model, so
that a retried or duplicated run of the same schedule never trains or promotes twice.

A slot's record, `{registry}/{model}/slots/{slot}.json`, changes only by the registry's conditional
writes: the first run to claim the slot creates it (create-only); after that only the run holding it
replaces it (if-match on the etag it last wrote), with a heartbeat and with what it has done so far
(its recipe, checkpoint, registered version, decision). Of two runs racing for a write exactly one
wins, so exactly one holds the slot. States:

    running    held by `holder` until `expires` (pushed forward by every heartbeat and update)
    released   let go of (a dry run, or a run that failed with an error): the next run takes it over
    done       final: a rerun of the slot prints its outcome and does nothing

A run killed without a word (SIGKILL, a lost node) leaves its claim `running`. It is taken over once
its lease has expired, or at once by a run on the same host that finds the holder's process gone
(under `ray job submit` every retry of a job runs on the head node). The run taking over keeps what
its predecessor recorded, so it resumes rather than starting again.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lstmclf.config import MAX_NAME_BYTES, PLAIN_NAME
from lstmclf.errors import ConfigError, LstmclfError, StorageError, WriteConflict

if TYPE_CHECKING:  # the registry imports torch; checking a slot name must not
    from lstmclf.registry import Registry

RUNNING, RELEASED, DONE = "running", "released", "done"


class SlotLost(LstmclfError):
    """Another run took the slot over (this run's lease had expired): this run must stop."""


def check_slot(slot: str) -> str:
    """A slot name is one plain path component: letters, digits, '.', '_', '-' (at most 128)."""
    if not PLAIN_NAME.fullmatch(slot):
        raise ConfigError(f"slot {slot[:100]!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    return slot


def run_name(model: str, slot: str) -> str:
    """The name of a slot's training run under the storage path: a rerun of the slot resumes it."""
    name = f"retrain-{model}-{slot}"
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"model name and slot make a run name of {len(name)} bytes; at most {MAX_NAME_BYTES}")
    return name


def slot_from_time(now: dt.datetime, hours: int) -> str:
    """The slot of a run started at `now` by a schedule every `hours` hours: the start of its period in
    UTC (periods counted from the epoch), e.g. 20261127T0000Z. Retries within the period agree."""
    period = hours * 3600
    start = int(now.timestamp()) // period * period
    return dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dT%H%MZ")


def holder() -> dict[str, Any]:
    """Who writes: host and pid, and a nonce that makes every claim's bytes its own (two writers of
    identical bytes would both pass for the one that wrote them)."""
    host = socket.gethostname()
    return {"holder": f"{host}:{os.getpid()}", "host": host, "pid": os.getpid(), "nonce": uuid.uuid4().hex}


@dataclass(frozen=True)
class Claim:
    """What `claim` found: `status` is claimed (a new slot), resumed (taken over from a run that is
    gone), held (another run holds it: `lease` is None) or done (`record` holds its outcome)."""

    status: str
    record: dict[str, Any]
    lease: Lease | None = None


def claim(registry: Registry, model: str, slot: str, seconds: float, fields: Callable[[], dict[str, Any]]) -> Claim:
    """Claim `slot` of `model` for this process; `fields()` goes into a new record (called only then: a
    run taking over keeps its predecessor's)."""
    rel = f"slots/{check_slot(slot)}.json"
    for _ in range(5):  # each lost race means another run wrote meanwhile: read again
        got = registry.read_record(model, rel)
        if got is None:
            record = {"slot": slot, "state": RUNNING, **holder(), "claimed_at": _iso(_now()), **fields()}
            record["expires"] = _iso(_now() + dt.timedelta(seconds=seconds))
            try:
                etag = registry.write_record(model, rel, record, create_only=True)
            except WriteConflict:
                continue
            return Claim("claimed", record, Lease(registry, model, rel, record, etag, seconds))
        record, etag = got
        if record.get("state") == DONE:
            return Claim("done", record)
        if record.get("state") == RUNNING and not _gone(record):
            return Claim("held", record)
        taken = {
            **record,
            "state": RUNNING,
            **holder(),
            "taken_over_from": {k: record.get(k) for k in ("holder", "state", "expires")},
            "takeovers": int(record.get("takeovers", 0)) + 1,
            "expires": _iso(_now() + dt.timedelta(seconds=seconds)),
        }
        try:
            etag = registry.write_record(model, rel, taken, if_match=etag)
        except WriteConflict:
            continue
        return Claim("resumed", taken, Lease(registry, model, rel, taken, etag, seconds))
    got = registry.read_record(model, rel)
    return Claim("held", got[0] if got else {})


class Lease:
    """The slot as held by this process. `update` records progress (and renews the lease); as a context
    manager a heartbeat thread renews it every quarter lease, and an error leaving the block releases
    the slot. If another run takes the slot over (this lease expired: a long stall), the heartbeat sends
    this process SIGINT, as Ctrl-C would, and `lost` says why."""

    def __init__(self, registry: Registry, model: str, rel: str, record: dict[str, Any], etag: str, seconds: float):
        self.registry, self.model, self.rel, self.seconds = registry, model, rel, seconds
        self._record, self._etag = dict(record), etag
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    @property
    def record(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._record)

    def update(self, **fields: Any) -> dict[str, Any]:
        """Add `fields` to the record and renew the lease, by a write conditional on our last one."""
        with self._lock:
            record = {**self._record, **fields}
            if record["state"] == RUNNING:
                record["expires"] = _iso(_now() + dt.timedelta(seconds=self.seconds))
            try:
                self._etag = self.registry.write_record(self.model, self.rel, record, if_match=self._etag)
            except WriteConflict:
                now = self.registry.read_record(self.model, self.rel)
                self.lost = f"slot {self._record['slot']} was taken over by {now[0].get('holder') if now else '?'}"
                raise SlotLost(self.lost) from None
            self._record = record
            return dict(record)

    def finish(self, **fields: Any) -> dict[str, Any]:
        """The slot is done: `fields` hold its outcome."""
        return self.update(state=DONE, finished_at=_iso(_now()), **fields)

    def release(self, **fields: Any) -> dict[str, Any]:
        """Let go of the slot, keeping what it recorded: the next run of it takes over at once."""
        return self.update(state=RELEASED, released_at=_iso(_now()), **fields)

    def _beat(self) -> None:
        while not self._stop.wait(max(self.seconds / 4, 0.2)):
            if self.record["state"] != RUNNING:
                return
            try:
                self.update()
            except SlotLost:
                os.kill(os.getpid(), signal.SIGINT)  # stop the training this process no longer owns
                return
            except StorageError:
                continue  # transient: the next beat tries again, well before the lease runs out

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name="lstmclf-slot-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is not None and self.lost is None and self._record["state"] == RUNNING:
            try:  # a failure: let the next run take over at once instead of waiting out the lease
                self.release(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500])
            except (LstmclfError, OSError):
                pass  # the lease then simply expires


def _gone(record: dict[str, Any]) -> bool:
    """Whether a running record's holder is gone: its lease expired, or it is a process of this host
    that no longer exists."""
    try:
        if dt.datetime.fromisoformat(record["expires"]) < _now():
            return True
    except (KeyError, TypeError, ValueError):
        return True  # not a record we wrote: nobody holds it
    if record.get("host") != socket.gethostname() or record.get("pid") == os.getpid():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError, OverflowError):
        return False  # another user's live process, or no pid: wait for the lease
    return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")
