"""sha256 manifests (`lstmclf.integrity`): the mechanism itself, then the same attacks tried on each of
its users through their real entry points: a prepared dataset (`load_splits`), a checkpoint
(`load_checkpoint`, and `Registry.register` reading one), a registry version (`Registry.load`)."""

import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.inputs import write_checkpoint, write_dataset

from lstmclf import integrity, storage
from lstmclf.checkpoint import load_checkpoint
from lstmclf.data import load_splits, prepare_dataset
from lstmclf.data.sample import NAMES
from lstmclf.errors import CheckpointError, DataError
from lstmclf.registry import Registry

ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc"), FIPS 180-2
M = integrity.Manifest("thing /x", "manifest.json", DataError, "(tampered or corrupt)", sep="/")


def test_digest_and_entries():
    assert integrity.sha256(b"abc") == ABC
    assert integrity.entry(b"abc") == {"sha256": ABC, "bytes": 3}
    assert integrity.digest(ABC) == ABC and integrity.digest({"sha256": ABC, "bytes": 3, "shape": [3]}) == ABC
    assert integrity.digest({"bytes": 3}) is None


def test_the_manifest_is_written_last_and_reads_back(tmp_path):
    files = {"b.bin": b"beta", "a.bin": b"alpha"}
    manifest = {"format": 1, "files": {name: integrity.entry(data) for name, data in files.items()}}
    puts = []
    integrity.write_last(lambda name, data: puts.append((name, data)), files, "manifest.json", manifest)
    assert [name for name, _ in puts] == ["b.bin", "a.bin", "manifest.json"]  # the files in order, then it
    assert puts[-1][1] == json.dumps(manifest, indent=2).encode()

    integrity.write_last(lambda name, data: storage.write_bytes(str(tmp_path / name), data), files, "m.json", manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "m.json"]  # no temporary left
    listed = json.loads((tmp_path / "m.json").read_bytes())["files"]
    integrity.verify(M, {name: (tmp_path / name).read_bytes() for name in files}, listed)


def test_verify_refuses_a_flipped_byte_an_unlisted_file_and_a_digest_that_is_not_one():
    files = {"a": b"alpha", "b": b"beta"}
    bare = {name: integrity.sha256(data) for name, data in files.items()}
    integrity.verify(M, files, bare)
    integrity.verify(M, files, {name: {"sha256": h} for name, h in bare.items()})
    with pytest.raises(
        DataError, match=r"^thing /x/b does not match the sha256 in its manifest.json \(tampered or corrupt\)$"
    ):
        integrity.verify(M, {**files, "b": b"bet\x01"}, bare)
    with pytest.raises(DataError, match=r"^thing /x: manifest.json does not list c$"):
        integrity.verify(M, {**files, "c": b""}, bare)
    for wrong in (5, None, [bare["a"]], {"sha256": 5}, {"bytes": 5}):
        with pytest.raises(DataError, match=r"^thing /x/a does not match the sha256"):
            integrity.verify(M, files, {**bare, "a": wrong})


@pytest.mark.parametrize("name", ["../a", "/etc/passwd", "sub/a", "sub\\a", "..", ".", ""])
def test_only_plain_names_may_be_listed(name):
    with pytest.raises(
        DataError, match=rf"^thing /x: manifest.json lists {re.escape(repr(name))}, not a file; refusing it$"
    ):
        integrity.check_names(M, ["a", name], lambda _: True, "a file")


def test_only_allowed_names_may_be_listed_and_the_required_must_be():
    allowed = ("a", "b")
    integrity.check_names(M, ["a"], allowed.__contains__, "a or b", required=["a"])
    with pytest.raises(DataError, match=r"^thing /x: manifest.json lists 'c', not a or b; refusing it$"):
        integrity.check_names(M, ["a", "c"], allowed.__contains__, "a or b")
    with pytest.raises(DataError, match=rf"^thing /x: manifest.json lists '{'x' * 100}', not"):  # cut at 100
        integrity.check_names(M, ["x" * 500], allowed.__contains__, "a or b")
    with pytest.raises(DataError, match=r"^thing /x: manifest.json does not list a$"):
        integrity.check_names(M, ["b"], allowed.__contains__, "a or b", required=["a"])


@dataclass
class Target:
    """A whole dataset, checkpoint or registry version: its files, how to reach them, its real entry
    points and what each of them says when it refuses."""

    read: Callable[[str], bytes]  # a file by its name in the directory (or prefix)
    write: Callable[[str, bytes], None]
    delete: Callable[[str], None]
    manifest: str
    victim: str  # the file it cannot do without
    bare: bool  # its manifest lists bare digests (a checkpoint's), else {"sha256": ..., ...}
    load: Callable[[], Any]  # its real entry point
    error: type[Exception]
    # The refusals, exactly, "{name}" standing for a file's name:
    mismatch: str
    missing: str
    unlisted: str
    refused: str
    bad_digest: str
    written: Callable[[], bool] = lambda: False  # whether a refused entry point wrote anything

    def manifest_files(self) -> dict[str, Any]:
        return json.loads(self.read(self.manifest))["files"]

    def set_files(self, files: dict[str, Any]) -> None:
        self.write(self.manifest, json.dumps({**json.loads(self.read(self.manifest)), "files": files}).encode())

    def entry(self, data: bytes) -> Any:
        return integrity.sha256(data) if self.bare else integrity.entry(data)

    def refuses(self, message: str, name: str = "") -> None:
        with pytest.raises(self.error) as e:
            self.load()
        assert str(e.value) == message.replace("{name}", name)
        assert not self.written()


def local_files(d: Path) -> dict[str, Callable]:
    def write(name: str, data: bytes) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)

    return {"read": lambda name: (d / name).read_bytes(), "write": write, "delete": lambda name: (d / name).unlink()}


def dataset(tmp_path: Path, _request) -> Target:
    write_dataset(tmp_path / "src")
    d = tmp_path / "pub"
    prepare_dataset(str(tmp_path / "src"), str(d))
    owner = f"dataset {d}"
    return Target(
        **local_files(d),
        manifest="manifest.json",
        victim=NAMES["train_images"],
        bare=False,
        load=lambda: load_splits(str(d)),
        error=DataError,
        mismatch=f"{owner}: {{name}} does not match the sha256 in its manifest.json (corrupt or replaced)",
        missing=f"{owner}: no file matching train-images[-.]idx3-ubyte(.gz)? (found: manifest.json, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, train-labels-idx1-ubyte.gz)",
        unlisted=f"{owner}: manifest.json does not list {{name}}",
        refused=f"{owner}: manifest.json lists {{name}}, not a dataset file (train-images[-.]idx3-ubyte(.gz)?, "
        "train-labels[-.]idx1-ubyte(.gz)?, t10k-images[-.]idx3-ubyte(.gz)?, t10k-labels[-.]idx1-ubyte(.gz)?, "
        "with any prefix); refusing it",
        bad_digest=f"{owner}: {{name}} does not match the sha256 in its manifest.json (corrupt or replaced)",
    )


def checkpoint(tmp_path: Path, request, register: bool = False, s3: bool = False) -> Target:
    d = tmp_path / "ckpt"
    write_checkpoint(d, seed=0, val_acc=0.5)
    server = request.getfixturevalue("s3") if s3 else None
    registry = Registry(server.uri("registry"), server.endpoint) if server else Registry(str(tmp_path / "registry"))
    owner = f"checkpoint {d}"
    return Target(
        **local_files(d),
        manifest="manifest.json",
        victim="checkpoint.pt",
        bare=True,
        load=(lambda: registry.register(str(d), "m")) if register else (lambda: load_checkpoint(str(d))),
        error=CheckpointError,
        mismatch=f"{owner}/{{name}} does not match the sha256 in its manifest.json (tampered or corrupt)",
        missing=f"{owner}: {d}/{{name}} does not exist",
        unlisted=f"{owner}: manifest.json does not list {{name}}",
        refused=f"{owner}: manifest.json lists {{name}}, not a checkpoint file "
        "(checkpoint.pt, config.yaml, metrics.json); refusing it",
        bad_digest=f"{owner}: manifest.json is corrupt",
        written=lambda: registry.versions("m") != [],  # a refused checkpoint is not registered at all
    )


def registered(tmp_path: Path, request, s3: bool = False) -> Target:
    write_checkpoint(tmp_path / "ckpt", seed=0, val_acc=0.5)
    if s3:
        server = request.getfixturevalue("s3")
        uri, endpoint = server.uri("registry"), server.endpoint

        def key(name: str) -> str:  # S3 keys are not paths: ../x is where such a path would point
            return f"{uri}/{posixpath.normpath(f'm/versions/000001/{name}')}"

        files = {
            "read": lambda name: server.get(key(name)),
            "write": lambda name, data: server.put(key(name), data),
            "delete": lambda name: server.client().delete_object(Bucket=server.bucket, Key=key(name).split("/", 3)[3]),
        }
    else:
        uri, endpoint = str(tmp_path / "registry"), ""
        files = local_files(tmp_path / "registry" / "m" / "versions" / "000001")
    registry = Registry(uri, endpoint)
    assert registry.register(str(tmp_path / "ckpt"), "m") == 1
    owner = f"registry {uri}: m version 1"
    return Target(
        **files,
        manifest="version.json",
        victim="checkpoint.pt",
        bare=False,
        load=lambda: registry.load("m", 1),
        error=CheckpointError,
        mismatch=f"{owner}: {{name}} does not match the sha256 in its version.json (tampered or corrupt); "
        "refusing to load",
        missing=f"{owner} lacks {{name}}",
        unlisted=f"{owner}: version.json does not list {{name}}",
        refused=f"{owner}: version.json lists {{name}}, not a checkpoint file "
        "(checkpoint.pt, config.yaml, metrics.json, manifest.json); refusing to load",
        bad_digest=f"{owner}: {{name}} does not match the sha256 in its version.json (tampered or corrupt); "
        "refusing to load",
    )


@pytest.fixture(
    params=[
        "dataset",
        "checkpoint",
        "checkpoint-register",
        pytest.param("checkpoint-register-s3", marks=pytest.mark.slow),
        "registry",
        pytest.param("registry-s3", marks=pytest.mark.slow),
    ]
)
def target(request, tmp_path) -> Target:
    build = {
        "dataset": dataset,
        "checkpoint": checkpoint,
        "checkpoint-register": lambda tmp, req: checkpoint(tmp, req, register=True),
        "checkpoint-register-s3": lambda tmp, req: checkpoint(tmp, req, register=True, s3=True),
        "registry": registered,
        "registry-s3": lambda tmp, req: registered(tmp, req, s3=True),
    }[request.param]
    return build(tmp_path, request)


def test_every_listed_file_is_verified(target):
    for name in target.manifest_files():
        raw = target.read(name)
        flipped = bytearray(raw)
        flipped[len(flipped) // 2] ^= 0x01  # one bit: still unpickles, still parses
        target.write(name, bytes(flipped))
        target.refuses(target.mismatch, name)
        target.write(name, raw)
    target.load()  # whole again


def test_a_missing_file_is_refused(target):
    target.delete(target.victim)
    target.refuses(target.missing, target.victim)


def test_a_listing_without_the_required_file_is_refused(target):
    files = target.manifest_files()
    del files[target.victim]
    target.set_files(files)
    target.refuses(target.unlisted, target.victim)


def test_a_file_the_manifest_does_not_list_is_never_read(target):
    target.write("unlisted.bin", b"never read")
    target.load()


def test_registering_copies_only_the_files_the_manifest_lists(tmp_path):
    write_checkpoint(tmp_path / "ckpt", seed=0, val_acc=0.5)
    (tmp_path / "ckpt" / "unlisted.bin").write_bytes(b"never copied")
    Registry(str(tmp_path / "registry")).register(str(tmp_path / "ckpt"), "m")
    copied = sorted(p.name for p in (tmp_path / "registry" / "m" / "versions" / "000001").iterdir())
    assert copied == [".claim", "checkpoint.pt", "config.yaml", "manifest.json", "metrics.json", "version.json"]


@pytest.mark.parametrize("where", ["parent", "absolute", "subdirectory", "backslash", "dot-dot"])
def test_a_listed_path_is_refused_even_with_its_right_digest(target, tmp_path, where):
    """A listed name is joined to the directory: `../x` must not be read (or copied) from outside it.
    The names end like a dataset file with a prefix ("x-train-images-..."), so only the refusal of
    paths, not a dataset's name pattern, stops them."""
    name = {
        "parent": f"../x-{target.victim}",
        "absolute": f"{tmp_path}/x-{target.victim}",
        "subdirectory": f"sub/x-{target.victim}",
        "backslash": f"..\\x-{target.victim}",
        "dot-dot": "..",
    }[where]
    evil = b"not what was listed"
    if "/" in name:  # it lies where the name points (on Linux a backslash is no separator) with its digest listed
        target.write(name, evil)
    files = target.manifest_files()
    target.set_files({**files, name: target.entry(evil)})
    target.refuses(target.refused, repr(name[:100]))
    target.set_files(files)
    target.load()  # untampered again


def test_a_digest_that_is_not_a_string_is_refused(target):
    files = target.manifest_files()
    for wrong in (5, None, [integrity.sha256(target.read(target.victim))]):
        entry = wrong if target.bare else {**files[target.victim], "sha256": wrong}
        target.set_files({**files, target.victim: entry})
        target.refuses(target.bad_digest, target.victim)
