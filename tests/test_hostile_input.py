"""Hostile input through the entry scripts: one line on stderr, exit status 2, before Ray starts,
nothing written, no code run, memory bounded."""

import hashlib
import io
import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from support.helpers import ray_started, run_job
from support.inputs import write_checkpoint, write_dataset

from lstmclf.data import encode_idx, parse_idx
from lstmclf.data.idx import MAX_HEADER
from lstmclf.errors import DataError


def one_line_refusal(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr[-2000:]
    assert message in res.stderr, res.stderr[:2000]
    assert not ray_started(res.stdout + res.stderr)
    assert len(res.stderr) < 1000  # user input echoed back is shortened


def gzip_bomb(header: bytes, inflated: int) -> bytes:
    """A valid IDX header followed by `inflated` zero bytes, gzipped in a stream (about 1 MB per GiB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(z.compress(chunk))
    out.append(z.flush())
    return b"".join(out)


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """1 GiB of zeros behind a header for 40 images: refused after inflating the 31,376 bytes the
    header declares plus one, in a process whose peak memory stays small."""
    head = encode_idx(np.zeros((40, 28, 28), np.uint8), compress=False)[:16]
    bomb = gzip_bomb(head, 1 << 30)
    assert len(bomb) < 2 << 20
    (tmp_path / "bomb.gz").write_bytes(bomb)
    code = (
        "import resource; from lstmclf.data import parse_idx\n"
        "def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        f"raw = open({str(tmp_path / 'bomb.gz')!r}, 'rb').read(); before = peak()\n"
        "try:\n    parse_idx(raw, 'bomb.gz')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        "print(peak() - before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "DataError bomb.gz: more bytes after the data of shape [40, 28, 28]"
    assert int(out[1]) < 64  # MB more at peak than before parsing; inflating the bomb whole took 2.6-3 GB


def test_a_header_declaring_more_than_memory_is_refused_before_inflating():
    huge = b"\0\0\x08\x03" + (1 << 31).to_bytes(4, "big") + (1 << 16).to_bytes(4, "big") * 2
    with pytest.raises(DataError, match=r"declares [\d,]+ bytes, more than half this machine's memory"):
        parse_idx(gzip_bomb(huge, 1 << 20), "huge.gz")
    assert MAX_HEADER == 1024


def test_gzip_with_several_members_still_reads():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = encode_idx(a, compress=False)
    two = _gz(raw[:10]) + _gz(raw[10:])  # what `cat a.gz b.gz` makes; gzip reads it as one file
    assert np.array_equal(parse_idx(two, "x"), a)


def _gz(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def test_labels_with_a_gap_are_refused_when_the_class_count_is_inferred(tmp_path):
    arrays = write_dataset(tmp_path / "d", n_train=40, classes=10)
    labels = arrays["train_labels"].copy()
    labels[17] = 200
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").write_bytes(encode_idx(labels))
    res = run_job("train.py", "--data", str(tmp_path / "d"), "--storage", str(tmp_path / "runs"), timeout=120)
    one_line_refusal(res, "train labels: label 200 at index 17 leaves class 10 without images")
    res = run_job("prepare_data.py", str(tmp_path / "d"), str(tmp_path / "published"), timeout=120)
    one_line_refusal(res, "label 200 at index 17")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "published").exists()


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefg", "bcdefgh", strict=True)
)


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({"bomb.yaml": ALIAS_BOMB}, ["--config", "bomb.yaml"], "bomb.yaml line 2 holds a YAML alias"),
        ({}, ["--set", "tune.space={a: &x [1, 2], b: *x}"], "--set tune.space line 1 holds a YAML alias"),
        (
            {"latin1.yaml": "model:\n  backbone: sm\xe4ll\n".encode("latin-1")},
            ["--config", "latin1.yaml"],
            "latin1.yaml is not UTF-8 text",
        ),
        ({"big.yaml": b"# " + b"x" * (2 << 20)}, ["--config", "big.yaml"], "a config is at most 1,048,576"),
        ({}, ["--name", "n" * 300], "config value storage.name: 'nnnnn"),
        ({}, ["--set", "model.backbone=" + "x" * 100_000], "config value model.backbone: 'xxxxx"),
        ({}, ["--set", "tune.space.model.hiden={choice: [1, 2]}"], "tune.space: unknown config key 'model.hiden'"),
    ],
)
def test_train_job_refuses_hostile_config_input(tmp_path, files, args, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    res = run_job("train.py", "--storage", "runs", *args, cwd=tmp_path, timeout=120)
    one_line_refusal(res, message)
    assert not (tmp_path / "runs").exists()


def test_evaluate_refuses_an_output_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    res = run_job("evaluate.py", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), timeout=120)
    one_line_refusal(res, f"--out '{tmp_path}/out' is a file, not a directory")
    assert (tmp_path / "out").read_text() == "not a directory"


def test_a_checkpoint_config_that_is_not_yaml_is_refused_at_resume(tmp_path):
    """A run's latest checkpoint whose config.yaml matches its manifest but is not YAML: resuming
    that run stops with one line before Ray starts."""
    run = tmp_path / "runs" / "r"
    write_checkpoint(run / "epoch_0001", config_text=b"model: [unclosed\n")
    res = run_job("train.py", "--storage", str(tmp_path / "runs"), "--name", "r", timeout=120)
    one_line_refusal(res, f"checkpoint {run}/epoch_0001/config.yaml line 2 is not valid YAML/JSON")
    assert json.loads((run / "epoch_0001" / "manifest.json").read_text())  # left as it was


def rewrite(d, name: str, data: bytes) -> None:
    """Replace one file of a checkpoint and make its manifest match (what a forger does)."""
    (d / name).write_bytes(data)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))


def test_the_registry_refuses_what_it_could_never_load(tmp_path):
    """A forged checkpoint (a pickle that would run code, its manifest made to match) and one whose
    config.yaml is not YAML are refused at `register`: no version is written, nothing becomes champion."""
    registry = tmp_path / "registry"
    evil = tmp_path / "evil"
    write_checkpoint(evil)
    buf = io.BytesIO()
    torch.save({"format": 1, "model": {}, "evil": print}, buf)
    rewrite(evil, "checkpoint.pt", buf.getvalue())
    res = run_job("registry.py", "--registry", str(registry), "register", str(evil), "--name", "m", timeout=120)
    one_line_refusal(res, f"checkpoint {evil}/checkpoint.pt is refused: it holds Python objects other than tensors")
    broken = tmp_path / "broken"
    write_checkpoint(broken, config_text=b"model: [unclosed\n")
    res = run_job("registry.py", "--registry", str(registry), "register", str(broken), "--name", "m", timeout=120)
    one_line_refusal(res, f"checkpoint {broken}/config.yaml line 2 is not valid YAML/JSON")
    assert not list(registry.rglob("version.json")) and not list(registry.rglob("champion.json"))


def test_corrupt_registry_files_are_one_line(tmp_path):
    registry = tmp_path / "registry"
    write_checkpoint(tmp_path / "ckpt")
    reg = ["registry.py", "--registry", str(registry)]
    assert run_job(*reg, "register", str(tmp_path / "ckpt"), "--name", "m", timeout=120).returncode == 0
    assert run_job(*reg, "promote", "m", "1", timeout=120).returncode == 0
    version = registry / "m" / "versions" / "000001" / "version.json"
    good = version.read_bytes()
    for data, message in [
        (b"{not json", "m version 1: version.json is not valid JSON (corrupt)"),
        (b"[1, 2]", "m version 1: version.json holds a list, not a JSON object (corrupt)"),
        (
            json.dumps(json.loads(good) | {"metrics": [1]}).encode(),
            "m version 1: version.json lacks or mistypes metrics (corrupt)",
        ),
    ]:
        version.write_bytes(data)
        one_line_refusal(run_job(*reg, "show", "m", "1", timeout=120), message)
    version.write_bytes(good)
    champion = registry / "m" / "champion.json"
    for data, message in [
        (b"\xff", "m/champion.json is not valid JSON"),
        (b'{"version": "1"}', "has no version number"),
    ]:
        champion.write_bytes(data)
        one_line_refusal(run_job(*reg, "show", "m", timeout=120), message)
    one_line_refusal(run_job(*reg, "list", "nope", timeout=120), f"registry {registry} has no model nope (models: m)")
    (tmp_path / "plain").write_text("x")
    res = run_job("registry.py", "--registry", str(tmp_path / "plain"), "list", timeout=120)
    one_line_refusal(res, f"registry {tmp_path}/plain is a file, not a directory")
