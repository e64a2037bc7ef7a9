"""Convolutional feature extractors: (B, in_channels, H, W) -> (B, C, h, w), plus optional pretrained init.

Every factory takes `(cfg, in_channels)` and returns a randomly initialised module;
`build_backbone` adds the pretrained weights in one place so every backbone gets the
same checks and error messages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lstmclf.errors import CheckpointError
from lstmclf.models.catalog import get_backbone, register_backbone

if TYPE_CHECKING:
    from lstmclf.config import ModelConfig


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # No conv bias: the following BN has its own shift.
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register_backbone("small")
def small(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """Fast two-stage CNN: (B, in, H, W) -> (B, 2*width, H/4, W/4); 28x28 -> 7x7."""
    w = cfg.width
    return nn.Sequential(
        OrderedDict(
            stage1=nn.Sequential(_conv_bn_relu(in_channels, w), _conv_bn_relu(w, w), nn.MaxPool2d(2)),
            stage2=nn.Sequential(_conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2)),
        )
    )


@register_backbone("vgg")
def vgg(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """VGG-style stack: (B, in, H, W) -> (B, 8*width, H/4, W/4); 28x28 -> 7x7."""
    w = cfg.width
    return nn.Sequential(
        OrderedDict(
            stage1=nn.Sequential(_conv_bn_relu(in_channels, 2 * w), _conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2)),
            stage2=nn.Sequential(_conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2)),
            stage3=nn.Sequential(_conv_bn_relu(4 * w, 8 * w), _conv_bn_relu(8 * w, 8 * w)),
        )
    )


@register_backbone("resnet")
def resnet(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """ResNet-18 trunk for small images: (B, in, 28, 28) -> (B, 512, 4, 4).

    The 7x7/2 stem and max-pool would shrink 28x28 to 7x7 before the first block, so the
    stem is a 3x3/1 conv and there is no max-pool. cfg.width is ignored: widths are ResNet-18's.
    """
    from torchvision.models import resnet18  # lazy: torchvision costs ~2 s to import, only resnet needs it

    net = resnet18(weights=None)  # random init; weights come only from cfg.pretrained, never downloaded
    conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits conv1
    # avgpool and fc are dropped: the head does the pooling.
    return nn.Sequential(
        OrderedDict(
            conv1=conv1,
            bn1=net.bn1,
            relu=net.relu,
            maxpool=nn.Identity(),
            layer1=net.layer1,
            layer2=net.layer2,
            layer3=net.layer3,
            layer4=net.layer4,
        )
    )


@register_backbone("none")
def identity(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """Identity: the pure row-by-row LSTM reads the raw pixels, (B, 1, 28, 28) passes through."""
    return nn.Identity()


def build_backbone(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """The backbone named by cfg.backbone, initialised from cfg.pretrained when that is set."""
    module = get_backbone(cfg.backbone)(cfg, in_channels)
    if cfg.pretrained:
        load_pretrained(module, cfg.pretrained, cfg.backbone)
    return module


def _keys(keys: Iterable[str], limit: int = 4) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_pretrained(module: nn.Module, path: str | Path, name: str = "backbone") -> None:
    """Copy weights from `path` into `module`, or raise CheckpointError with one line saying why.

    The file holds either the backbone's own state_dict or a full lstmclf checkpoint
    `{"model": state_dict, ...}`, whose `backbone.*` entries are used.
    """
    where = f"pretrained weights {path}"
    try:
        # weights_only: a weights file must never run code when loaded.
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{where} not found") from None
    except OSError as e:
        raise CheckpointError(f"{where} cannot be read: {e.strerror or _first_line(e)}") from None
    except Exception as e:  # torch.load raises many types on bad input: zip, pickle, EOF, index errors
        raise CheckpointError(f"{where} is not a readable weights file ({_first_line(e)})") from None

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state_dict")
    if isinstance(obj.get("model"), Mapping):  # full model checkpoint
        prefix = "backbone."
        obj = {k[len(prefix) :]: v for k, v in obj["model"].items() if isinstance(k, str) and k.startswith(prefix)}
        if not obj:
            raise CheckpointError(f"{where} is a model checkpoint without backbone.* weights")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{where} is not a state_dict: non-tensor entries {_keys(not_tensors)}")

    own = module.state_dict()
    if not own:
        raise CheckpointError(f"{where} cannot initialise backbone {name!r}: it has no weights")
    problems = []
    missing = own.keys() - obj.keys()
    unexpected = obj.keys() - own.keys()
    if missing:
        problems.append(f"missing keys {_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_keys(unexpected)}")
    shapes = {k: (tuple(obj[k].shape), tuple(v.shape)) for k, v in own.items() if k in obj and obj[k].shape != v.shape}
    if shapes:
        shown = ", ".join(f"{k} {f} vs {m}" for k, (f, m) in sorted(shapes.items())[:2])
        more = f", ... ({len(shapes) - 2} more)" if len(shapes) > 2 else ""
        problems.append(f"shape mismatch (file vs model) {shown}{more}")
    if problems:
        raise CheckpointError(f"{where} do not fit backbone {name!r}: {'; '.join(problems)}")
    module.load_state_dict(obj, strict=True)
