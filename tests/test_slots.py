"""Slot claims for scheduled retraining (lstmclf.slots) on the registry's conditional writes, on a local
directory and on a real S3 server: one holder at a time, a finished slot stays done, a crashed holder's
claim is taken over (expired lease, or a dead process of this host), and a holder that lost its slot
finds out."""

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from lstmclf.errors import ConfigError
from lstmclf.registry import Registry
from lstmclf.slots import SlotLost, check_slot, claim, run_name, slot_from_time


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def registry(request, tmp_path):
    if request.param == "local":
        return Registry(str(tmp_path / "registry"))
    s3 = request.getfixturevalue("s3")
    return Registry(s3.uri("registry"), s3.endpoint)


def fields():
    return {"recipe": {"train": {"epochs": 1}}}


def test_one_claim_wins_and_a_finished_slot_stays_done(registry):
    barrier = threading.Barrier(4)
    claims = []

    def race():
        barrier.wait()
        claims.append(claim(registry, "m", "nightly-1", 60, fields))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.status for c in claims) == ["claimed", "held", "held", "held"]
    (won,) = [c for c in claims if c.lease]
    assert all(c.record["holder"] == won.record["holder"] for c in claims)

    won.lease.update(checkpoint="runs/x/epoch_0001")
    won.lease.finish(outcome="rejected")
    again = claim(registry, "m", "nightly-1", 60, fields)
    assert again.status == "done" and again.lease is None
    assert again.record["outcome"] == "rejected" and again.record["checkpoint"] == "runs/x/epoch_0001"
    assert claim(registry, "m", "nightly-2", 60, fields).status == "claimed"  # another slot: its own claim


def test_an_expired_lease_is_taken_over_and_the_old_holder_finds_out(registry):
    first = claim(registry, "m", "s", 3, fields)
    first.lease.update(checkpoint="c")
    assert claim(registry, "m", "s", 3, fields).status == "held"
    time.sleep(3.5)  # no heartbeat: the lease runs out
    second = claim(registry, "m", "s", 60, lambda: {"recipe": "not used"})
    assert second.status == "resumed" and second.record["checkpoint"] == "c"
    assert second.record["recipe"] == fields()["recipe"]  # the slot keeps the recipe it was claimed with
    assert second.record["taken_over_from"]["state"] == "running" and second.record["takeovers"] == 1
    with pytest.raises(SlotLost, match="slot s was taken over by"):
        first.lease.update(version=3)
    assert registry.read_record("m", "slots/s.json")[0].get("version") is None


def test_the_heartbeat_keeps_a_lease_and_stops_a_run_that_lost_it(registry):
    # Python's own Ctrl-C handler: Ray Train's fit() installs one of its own and leaves it behind, so an
    # in-process run earlier in the session would otherwise take this SIGINT.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _heartbeat_then_lost(registry)
    finally:
        signal.signal(signal.SIGINT, previous)


def _heartbeat_then_lost(registry) -> None:
    lease = claim(registry, "m", "beat", 10, fields).lease
    with lease:
        time.sleep(12)  # beats every 2.5 s: outlives its lease (a loaded machine stalled 4 s leases' beats)
        assert claim(registry, "m", "beat", 4, fields).status == "held"
    # A holder whose slot was taken over gets SIGINT from its heartbeat, as Ctrl-C would stop it.
    lease = claim(registry, "m", "lost", 1, fields).lease
    record, etag = registry.read_record("m", "slots/lost.json")
    registry.write_record("m", "slots/lost.json", {**record, "holder": "elsewhere:1"}, if_match=etag)
    with pytest.raises(KeyboardInterrupt), lease:
        time.sleep(10)
    assert lease.lost == "slot lost was taken over by elsewhere:1"


def test_a_dead_holder_on_this_host_is_taken_over_at_once(registry, tmp_path):
    """A killed job's claim (its lease still running) is taken over by a rerun on the same host."""
    script = (
        "import sys; from lstmclf.registry import Registry; from lstmclf.slots import claim\n"
        f"claim(Registry({registry.uri!r}, {registry.endpoint!r}), 'm', 'k', 600, lambda: {{'recipe': 1}})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    record = registry.read_record("m", "slots/k.json")[0]
    assert record["state"] == "running" and dt.datetime.fromisoformat(record["expires"]) > dt.datetime.now(dt.UTC)
    got = claim(registry, "m", "k", 600, fields)
    assert got.status == "resumed" and got.record["taken_over_from"]["holder"] == record["holder"]


def test_a_failure_releases_the_slot_for_the_next_run(registry):
    lease = claim(registry, "m", "f", 600, fields).lease
    with pytest.raises(RuntimeError), lease:
        raise RuntimeError("out of memory\nmore lines")
    record = registry.read_record("m", "slots/f.json")[0]
    assert record["state"] == "released" and record["error"] == "RuntimeError: out of memory"
    assert claim(registry, "m", "f", 600, fields).status == "resumed"


def test_slot_names_and_slots_from_the_time():
    assert check_slot("lstmclf-retrain-29412345") == "lstmclf-retrain-29412345"
    for bad in ("", "a/b", "../x", "-x", "x" * 129, "a b"):
        with pytest.raises(ConfigError, match="must be letters, digits"):
            check_slot(bad)
    at = dt.datetime(2026, 11, 27, 3, 17, tzinfo=dt.UTC)
    assert slot_from_time(at, 24) == "20261127T0000Z" and slot_from_time(at, 6) == "20261127T0000Z"
    assert slot_from_time(at + dt.timedelta(hours=20), 24) == "20261127T0000Z"
    assert (
        slot_from_time(at, 1) == "20261127T0300Z" and slot_from_time(at + dt.timedelta(days=1), 24) == "20261128T0000Z"
    )
    assert run_name("mnist", "s1") == "retrain-mnist-s1"
    with pytest.raises(ConfigError, match="run name of 131 bytes"):
        run_name("m" * 120, "s1")


def test_records_are_json_and_conditional(registry):
    assert registry.read_record("m", "slots/none.json") is None
    etag = registry.write_record("m", "slots/x.json", {"a": 1}, create_only=True)
    doc, seen = registry.read_record("m", "slots/x.json")
    assert doc == {"a": 1} and seen == etag
    registry.write_record("m", "slots/x.json", {"a": 2}, if_match=etag)
    with pytest.raises(Exception, match="written by another run meanwhile"):
        registry.write_record("m", "slots/x.json", {"a": 3}, if_match=etag)
    assert json.loads(json.dumps(registry.read_record("m", "slots/x.json")[0])) == {"a": 2}
