"""Model family: every registered (backbone, head) pair builds, runs and trains; pretrained init is checked."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lstmclf.config import AXES, POOLS, ModelConfig
from lstmclf.errors import CheckpointError, ConfigError
from lstmclf.models import Classifier, backbone_names, build_backbone, build_model, catalog, head_names

# Read at collection time, so a newly registered backbone or head is covered without editing this file.
PAIRS = [(b, h) for b in backbone_names() for h in head_names() if (b, h) != ("none", "linear")]
# (in_shape, num_classes): MNIST, and a non-square MNIST-format image with other classes.
SHAPES = [((1, 28, 28), 10), ((1, 20, 32), 5)]
TINY = {"width": 4, "hidden": 8}  # keeps the whole file fast on 2 CPU cores


def check_trains(
    model: nn.Module,
    in_shape: tuple[int, int, int],
    num_classes: int,
    batch: int = 3,
    may_be_zero: tuple[str, ...] = (),
) -> None:
    """Logits have shape (B, num_classes) and are finite; every parameter gets a finite, nonzero gradient.

    Parameters whose name holds one of `may_be_zero` need only a finite gradient.
    """
    model.train()
    x = torch.randn(batch, *in_shape)
    logits = model(x)
    assert logits.shape == (batch, num_classes)
    assert torch.isfinite(logits).all()
    loss = nn.functional.cross_entropy(logits, torch.arange(batch) % num_classes)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        if not any(part in name for part in may_be_zero):
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("in_shape", "num_classes"), SHAPES, ids=["28x28", "20x32"])
@pytest.mark.parametrize(("backbone", "head"), PAIRS, ids=[f"{b}+{h}" for b, h in PAIRS])
def test_every_registered_pair(backbone: str, head: str, in_shape: tuple[int, int, int], num_classes: int) -> None:
    model = build_model(ModelConfig(backbone=backbone, head=head, **TINY), num_classes, in_shape)
    assert isinstance(model, Classifier)
    check_trains(model, in_shape, num_classes)


LSTM_VARIANTS = list(itertools.product(AXES, POOLS, (True, False), (1, 3)))


@pytest.mark.parametrize(("in_shape", "num_classes"), SHAPES, ids=["28x28", "20x32"])
@pytest.mark.parametrize(
    ("axis", "pool", "bidirectional", "layers"),
    LSTM_VARIANTS,
    ids=[f"{a}-{p}-{'bi' if b else 'uni'}-L{n}" for a, p, b, n in LSTM_VARIANTS],
)
def test_lstm_head_variants(
    axis: str, pool: str, bidirectional: bool, layers: int, in_shape: tuple[int, int, int], num_classes: int
) -> None:
    cfg = ModelConfig(
        backbone="small", head="lstm", axis=axis, pool=pool, bidirectional=bidirectional, lstm_layers=layers, **TINY
    )
    check_trains(build_model(cfg, num_classes, in_shape), in_shape, num_classes)


@pytest.mark.parametrize("backbone", backbone_names())
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 9, 13)], ids=["min-8x8", "rgb-9x13"])
def test_small_and_odd_images(backbone: str, in_shape: tuple[int, int, int]) -> None:
    model = build_model(ModelConfig(backbone=backbone, head="lstm", axis="both", **TINY), 2, in_shape)
    # resnet turns 8x8 into 1x1: a one-step sequence starts from h_0 = 0, so the recurrent weights get no gradient.
    one_step = min(model.feat_shape[1:]) == 1
    check_trains(model, in_shape, 2, batch=2, may_be_zero=("weight_hh",) if one_step else ())


def test_feature_shapes_on_mnist() -> None:
    shapes = {
        b: build_model(ModelConfig(backbone=b, **TINY), 10, (1, 28, 28)).feat_shape
        for b in ("small", "vgg", "resnet", "none")
    }
    assert shapes == {"small": (8, 7, 7), "vgg": (32, 7, 7), "resnet": (512, 4, 4), "none": (1, 28, 28)}


def test_build_leaves_batchnorm_untouched_and_training() -> None:
    model = build_model(ModelConfig(backbone="small", **TINY), 10, (1, 28, 28))
    assert model.training and model.backbone.training
    bn = model.backbone.stage1[0][1]
    assert int(bn.num_batches_tracked) == 0  # the dry forward ran in eval mode
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_last_pool_uses_backward_final_state() -> None:
    """'last' with a bidirectional LSTM is h_n of both directions, not out[:, -1]."""
    cfg = ModelConfig(backbone="none", head="lstm", bidirectional=True, lstm_layers=1, pool="last", hidden=6)
    enc = build_model(cfg, 3, (1, 10, 10)).head.encoders["rows"]
    seq = torch.randn(2, 10, 10)
    out, _ = enc.lstm(seq)
    pooled = enc(seq)
    assert torch.allclose(pooled[:, :6], out[:, -1, :6])  # forward direction: last step
    assert torch.allclose(pooled[:, 6:], out[:, 0, 6:])  # backward direction: after reading back to t=0


def test_lstm_runs_in_fp32_under_bf16_autocast() -> None:
    """Autocast would run the LSTM in half precision (fp16 through cuDNN on GPU, without the loss
    scaling fp16 needs); the rest of the model still takes the autocast dtype."""
    model = build_model(ModelConfig(), num_classes=10, in_shape=(1, 28, 28))
    seen = {}
    model.head.encoders["rows"].lstm.register_forward_hook(lambda m, i, o: seen.update(dtype=o[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(4, 1, 28, 28))
    assert seen["dtype"] == torch.float32 and logits.dtype == torch.bfloat16
    logits.float().sum().backward()


def test_duplicate_registration_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="already registered"):
        catalog.register_backbone("small")(lambda cfg, c: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        catalog.register_head("lstm")(lambda cfg, shape, n: nn.Identity())
    # A new name works once, then refuses a second registration; the real tables stay untouched.
    monkeypatch.setattr(catalog, "_BACKBONES", dict(catalog._BACKBONES))
    catalog.register_backbone("test_only")(lambda cfg, c: nn.Identity())
    assert "test_only" in catalog.backbone_names()
    with pytest.raises(ValueError, match="test_only"):
        catalog.register_backbone("test_only")(lambda cfg, c: nn.Identity())


def test_catalog_names_are_what_config_accepts() -> None:
    build_model(ModelConfig(), 10, (1, 28, 28))  # the built-in modules have registered themselves
    assert backbone_names() == catalog.BUILTIN_BACKBONES == tuple(catalog._BACKBONES)  # the torch-free list agrees
    assert head_names() == catalog.BUILTIN_HEADS == tuple(catalog._HEADS)
    for b in backbone_names():
        assert ModelConfig(backbone=b, head="lstm").backbone == b
    for h in head_names():
        assert ModelConfig(backbone="small", head=h).head == h
    with pytest.raises(ConfigError, match="nope"):
        ModelConfig(backbone="nope")
    with pytest.raises(ConfigError, match="nope"):
        ModelConfig(head="nope")
    with pytest.raises(ConfigError):
        ModelConfig(backbone="none", head="linear")


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("backbone", ["small", "vgg"])
def test_pretrained_from_backbone_state_dict(tmp_path: Path, backbone: str) -> None:
    cfg = ModelConfig(backbone=backbone, **TINY)
    src = build_backbone(cfg, 1)
    for m in src.modules():  # make BN buffers non-default so they are checked too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_()
            m.num_batches_tracked.fill_(7)
    path = tmp_path / "bb.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)  # a different random init, which the file must overwrite
    model = build_model(dataclasses.replace(cfg, pretrained=str(path)), 10, (1, 28, 28))
    assert _same_state(model.backbone, src)


def test_pretrained_from_full_model_checkpoint(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone="small", head="linear", **TINY)
    src = build_model(cfg, 10, (1, 28, 28))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict(), "epoch": 3, "config": {"model": {"head": "linear"}}}, path)
    torch.manual_seed(1)
    # The head may differ from the checkpoint's: only backbone.* is used.
    model = build_model(dataclasses.replace(cfg, head="lstm", pretrained=str(path)), 5, (1, 20, 32))
    assert _same_state(model.backbone, src.backbone)


def test_pretrained_resnet(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone="resnet", head="linear")
    src = build_backbone(cfg, 1)
    path = tmp_path / "resnet.pt"
    torch.save(src.state_dict(), path)
    assert _same_state(build_backbone(dataclasses.replace(cfg, pretrained=str(path)), 1), src)


class _NotATensor:
    pass


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment its error message must hold)."""
    small4 = build_backbone(ModelConfig(backbone="small", width=4), 1).state_dict()
    files: dict[str, tuple[Path, str]] = {"missing": (tmp / "absent.pt", "not found")}
    (tmp / "corrupt.pt").write_bytes(b"\x00garbage, not a torch file" * 10)
    files["corrupt"] = (tmp / "corrupt.pt", "not a readable weights file")
    torch.save({"x": _NotATensor()}, tmp / "pickled.pt")  # weights_only refuses arbitrary objects
    files["pickled_object"] = (tmp / "pickled.pt", "not a readable weights file")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    files["not_a_dict"] = (tmp / "tensor.pt", "not a state_dict")
    torch.save(build_backbone(ModelConfig(backbone="small", width=8), 1).state_dict(), tmp / "wide.pt")
    files["shape_mismatch"] = (tmp / "wide.pt", "shape mismatch")
    torch.save(build_backbone(ModelConfig(backbone="vgg", width=4), 1).state_dict(), tmp / "vgg.pt")
    files["other_backbone"] = (tmp / "vgg.pt", "unexpected keys")
    torch.save({k: v for k, v in small4.items() if "stage2" not in k}, tmp / "partial.pt")
    files["missing_keys"] = (tmp / "partial.pt", "missing keys stage2.")
    torch.save({"model": {"head.fc.weight": torch.zeros(2, 2)}}, tmp / "headonly.pt")
    files["no_backbone_in_checkpoint"] = (tmp / "headonly.pt", "without backbone")
    torch.save({**small4, "epoch": 3}, tmp / "mixed.pt")
    files["non_tensor_entry"] = (tmp / "mixed.pt", "non-tensor entries epoch")
    (tmp / "dir.pt").mkdir()
    files["directory"] = (tmp / "dir.pt", "cannot be read")
    return files


BAD = [
    "missing",
    "corrupt",
    "pickled_object",
    "not_a_dict",
    "shape_mismatch",
    "other_backbone",
    "missing_keys",
    "no_backbone_in_checkpoint",
    "non_tensor_entry",
    "directory",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_pretrained_file_raises_checkpoint_error(tmp_path: Path, case: str) -> None:
    path, fragment = _bad_files(tmp_path)[case]
    cfg = ModelConfig(backbone="small", width=4, pretrained=str(path))
    with pytest.raises(CheckpointError) as info:
        build_model(cfg, 10, (1, 28, 28))
    msg = str(info.value)
    assert str(path) in msg and fragment in msg
    assert "\n" not in msg and len(msg) < len(str(path)) + 400, msg


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(build_backbone(ModelConfig(backbone="resnet"), 1).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"more\)") as info:
        build_model(ModelConfig(backbone="small", pretrained=str(path)), 10, (1, 28, 28))
    assert len(str(info.value)) < 600


def test_pretrained_on_identity_backbone_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({}, path)
    with pytest.raises(CheckpointError, match="no weights"):
        build_model(ModelConfig(backbone="none", pretrained=str(path)), 10, (1, 28, 28))


def test_a_config_is_checked_without_torch() -> None:
    """A typo in --set costs no torch import: the jobs' flags and the config load torch-free."""
    code = (
        "import sys, lstmclf.cli, lstmclf.config; "
        "lstmclf.config.Config.from_dict({'model': {'backbone': 'resnet', 'head': 'linear'}}); "
        "print('torch' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_models_and_data_never_import_ray() -> None:
    code = (
        "import sys, lstmclf.models, lstmclf.config, lstmclf.data, lstmclf.evaluation, lstmclf.registry, "
        "lstmclf.space, lstmclf.promotion, lstmclf.slots, lstmclf.retraining; lstmclf.config.ModelConfig(); "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_ray_worker_hook_imports_nothing_heavy() -> None:
    # Ray imports the hook's module in every worker process of a job, its own small actors included:
    # torch there costs each of them ~2.5 CPU-s (about a third of a tiny trial's CPU).
    code = (
        "import importlib, sys, lstmclf.worker_setup as w; "
        "mod, _, fn = w.RUNTIME_ENV['worker_process_setup_hook'].rpartition('.'); "
        "assert getattr(importlib.import_module(mod), fn) is w.pin_cluster_address; "
        "print(sorted({'torch', 'pyarrow', 'numpy', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
