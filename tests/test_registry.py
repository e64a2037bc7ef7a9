"""The model registry, on a local directory and on a real S3 server: register, list, show, promote
(conditionally: one winner of two concurrent promotions), load. Every file's sha256 checked on
register and load, names outside a checkpoint refused: tests/test_integrity.py."""

import json
import threading

import pytest
import torch
from support.helpers import run_job
from support.inputs import write_checkpoint

from lstmclf.errors import RegistryError
from lstmclf.registry import Registry


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def where(request, tmp_path):
    """(registry URI, endpoint, read(rel) -> bytes, write(rel, bytes)) for each kind of storage."""
    if request.param == "local":
        root = tmp_path / "registry"
        return str(root), "", lambda rel: (root / rel).read_bytes(), lambda rel, b: (root / rel).write_bytes(b)
    s3 = request.getfixturevalue("s3")
    uri = s3.uri("registry")
    return uri, s3.endpoint, lambda rel: s3.get(f"{uri}/{rel}"), lambda rel, b: s3.put(f"{uri}/{rel}", b)


def test_register_list_show_promote_load(where, tmp_path):
    uri, endpoint, read, _ = where
    r = Registry(uri, endpoint)
    models = [write_checkpoint(tmp_path / f"run/epoch_000{i}", seed=i, val_acc=0.9 + i / 100) for i in (1, 2)]
    assert r.register(str(tmp_path / "run/epoch_0001"), "mnist") == 1
    assert r.register(str(tmp_path / "run/epoch_0002"), "mnist", source="exp-42") == 2
    assert r.names() == ["mnist"] and r.versions("mnist") == [1, 2] and r.champion("mnist") is None

    v2 = r.show("mnist", 2)
    assert v2["metrics"]["val_acc"] == pytest.approx(0.92) and v2["config"]["model"]["hidden"] == 8
    assert v2["source"] == {"checkpoint": str(tmp_path / "run/epoch_0002"), "experiment": "exp-42"}
    assert r.show("mnist", 1)["source"]["experiment"] == str(tmp_path / "run")
    assert set(v2["files"]) == {"checkpoint.pt", "config.yaml", "metrics.json", "manifest.json"}
    assert read("mnist/versions/000002/checkpoint.pt") == (tmp_path / "run/epoch_0002/checkpoint.pt").read_bytes()

    v, etag = r.promote("mnist", 1)  # no champion yet: create-only
    assert v == 1 and r.champion("mnist") == (1, etag)
    with pytest.raises(RegistryError, match="the champion of mnist changed since it was read"):
        r.promote("mnist", 2)  # believes there is none: stale
    assert r.promote("mnist", "v2", expected=etag) == r.champion("mnist")
    assert r.champion("mnist")[0] == 2 and r.show("mnist")["version"] == 2
    assert r.promote("mnist", "champion", expected=r.champion("mnist")[1])[0] == 2  # resolved to its number

    x = torch.rand(3, 1, 28, 28)
    model, cfg, state = r.load("mnist")  # the champion
    assert torch.equal(model(x), models[1](x)) and cfg.model.hidden == 8 and state["epoch"] == 2
    assert torch.equal(r.load("mnist", 1)[0](x), models[0](x))
    with pytest.raises(RegistryError, match="mnist has no version 7"):
        r.promote("mnist", 7, expected=r.champion("mnist")[1])
    with pytest.raises(RegistryError, match="model name"):
        r.versions("../escape")


def test_versions_are_immutable_and_numbers_never_shared(where, tmp_path):
    uri, endpoint, read, _ = where
    write_checkpoint(tmp_path / "ckpt", seed=0, val_acc=0.5)
    registries = [Registry(uri, endpoint) for _ in range(4)]
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda r=r: got.append(r.register(str(tmp_path / "ckpt"), "m"))) for r in registries
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4] and registries[0].versions("m") == [1, 2, 3, 4]
    before = read("m/versions/000001/version.json")
    with pytest.raises(RegistryError, match="versions are immutable"):
        registries[0]._put_new("m/versions/000001/version.json", b"{}")
    assert read("m/versions/000001/version.json") == before


def test_concurrent_promotions_leave_exactly_one_winner(where, tmp_path):
    uri, endpoint, _, _ = where
    write_checkpoint(tmp_path / "ckpt", seed=0, val_acc=0.5)
    setup = Registry(uri, endpoint)
    for _ in range(3):
        setup.register(str(tmp_path / "ckpt"), "m")
    for expected in (None, "read"):  # first promotion ever, then a change of champion
        seen = setup.champion("m")
        token = None if expected is None else seen[1]
        barrier = threading.Barrier(2)
        wins, losses = [], []

        def promote(version, token=token, barrier=barrier, wins=wins, losses=losses):
            r = Registry(uri, endpoint)
            r.champion("m")  # connect before the race
            barrier.wait()
            try:
                wins.append(r.promote("m", version, expected=token))
            except RegistryError as e:
                losses.append(str(e))

        threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and len(losses) == 1, (wins, losses)
        assert setup.champion("m") == wins[0] and wins[0][0] in (2, 3)  # the pointer is the winner's
        assert "changed since it was read" in losses[0]


def test_registry_job_locally(tmp_path):
    write_checkpoint(tmp_path / "run" / "epoch_0003", seed=0, val_acc=0.875)
    reg = ["--registry", str(tmp_path / "registry")]
    res = run_job("registry.py", *reg, "list")
    assert res.returncode == 0 and res.stdout == f"no models in {tmp_path / 'registry'}\n", res.stderr
    for _ in range(2):
        res = run_job("registry.py", *reg, "register", str(tmp_path / "run" / "epoch_0003"), "--name", "mnist")
        assert res.returncode == 0, res.stderr
    res = run_job("registry.py", *reg, "promote", "mnist", "v2")
    assert res.returncode == 0 and res.stdout == "mnist: champion is now version 2 (was none)\n", res.stderr
    res = run_job("registry.py", *reg, "promote", "mnist", "champion")  # printed its number, not a traceback
    assert res.returncode == 0 and res.stdout == "mnist: champion is now version 2 (was version 2)\n", res.stderr
    res = run_job("registry.py", *reg, "list")
    assert res.returncode == 0 and res.stdout == "mnist: versions 1, 2; champion version 2\n", res.stderr


@pytest.mark.slow
def test_registry_job(s3, tmp_path):
    write_checkpoint(tmp_path / "run" / "epoch_0003", seed=0, val_acc=0.875)
    reg = ["--registry", s3.uri("registry"), "--s3-endpoint", s3.endpoint]
    res = run_job("registry.py", *reg, "register", str(tmp_path / "run" / "epoch_0003"), "--name", "mnist")
    assert res.returncode == 0 and "as mnist version 1" in res.stdout, res.stderr
    res = run_job("registry.py", *reg, "promote", "mnist", "1")
    assert res.returncode == 0 and res.stdout == "mnist: champion is now version 1 (was none)\n", res.stderr
    res = run_job("registry.py", *reg, "list", "mnist")
    assert res.returncode == 0 and res.stdout.startswith("mnist v1  val_acc 0.8750  epoch 3")
    assert res.stdout.rstrip().endswith("(champion)")
    res = run_job("registry.py", *reg, "show", "mnist")
    assert res.returncode == 0 and json.loads(res.stdout)["version"] == 1
    res = run_job("registry.py", *reg, "promote", "mnist", "5")
    assert res.returncode == 2 and res.stderr.startswith("error: registry s3://") and "has no version 5" in res.stderr
    res = run_job("registry.py", "--registry", "s3://no-such-bucket/r", "--s3-endpoint", s3.endpoint, "list")
    assert res.returncode == 2 and res.stderr.startswith("error: bucket no-such-bucket does not exist")


def test_rollback_puts_the_previous_champion_back(where, tmp_path):
    uri, endpoint, _, write = where
    r = Registry(uri, endpoint)
    write_checkpoint(tmp_path / "ckpt", seed=0, val_acc=0.5)
    for _ in range(3):
        r.register(str(tmp_path / "ckpt"), "m")
    assert r.find_version("m", str(tmp_path / "ckpt" / "checkpoint.pt")) == 3  # the newest of that checkpoint
    assert r.find_version("m", str(tmp_path / "other")) is None
    seen = None
    for v in (1, 2, 3):
        seen = r.promote("m", v, expected=seen[1] if seen else None)
    assert r.champion_record("m")[0]["previous"] == [2, 1]
    stale = r.champion("m")[1]
    assert r.rollback("m") == (2, 3) and r.champion("m")[0] == 2
    with pytest.raises(RegistryError, match="changed since it was read"):
        r.rollback("m", expected=stale)  # rollback is a conditional write too
    assert r.rollback("m") == (1, 2) and r.champion_record("m")[0]["previous"] == []
    with pytest.raises(RegistryError, match="records no champion before version 1"):
        r.rollback("m")
    # A pointer written before champions kept their history still loads; it has nothing to roll back to.
    write("m/champion.json", json.dumps({"version": 3, "promoted_at": "2026-01-01", "by": "x", "nonce": "n"}).encode())
    assert r.champion("m")[0] == 3
    with pytest.raises(RegistryError, match="records no champion before version 3"):
        r.rollback("m")
    r.promote("m", 1, expected=r.champion("m")[1])
    assert r.champion_record("m")[0]["previous"] == [3]


def test_decision_records_are_written_once(where, tmp_path):
    uri, endpoint, _, _ = where
    r = Registry(uri, endpoint)
    write_checkpoint(tmp_path / "ckpt", seed=0, val_acc=0.5)
    r.register(str(tmp_path / "ckpt"), "m")
    assert r.decision("m", 1) is None
    where_written = r.write_decision("m", 1, {"outcome": "rejected"})
    assert where_written == f"{uri}/m/versions/000001/decision.json"
    assert r.write_decision("m", 1, {"outcome": "rejected"}) == where_written  # the same record again: a retry
    with pytest.raises(RegistryError, match="versions are immutable"):
        r.write_decision("m", 1, {"outcome": "promoted"})
    assert r.decision("m", 1) == {"outcome": "rejected"} and r.versions("m") == [1]
    r.load("m", 1)  # decision.json beside the files version.json lists does not disturb loading


def test_rollback_job(tmp_path):
    write_checkpoint(tmp_path / "run" / "epoch_0001", seed=0, val_acc=0.5)
    r = Registry(str(tmp_path / "registry"))
    for v in (1, 2):
        r.register(str(tmp_path / "run" / "epoch_0001"), "m")
        r.promote("m", v, expected=r.champion("m")[1] if v > 1 else None)
    reg = ["--registry", str(tmp_path / "registry")]
    res = run_job("registry.py", *reg, "rollback", "m")
    assert res.returncode == 0 and res.stdout == "m: champion is now version 1 (rolled back from version 2)\n", (
        res.stderr
    )
    res = run_job("registry.py", *reg, "rollback", "m")
    assert res.returncode == 2 and res.stderr.strip().endswith("m records no champion before version 1")
