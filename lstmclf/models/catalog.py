"""Name -> factory tables for backbones and heads (architectures, not trained models: those are in
`lstmclf.registry`), filled by decorators (torchvision/timm style).

`ModelConfig` validates its names against these tables, and the tests cover every registered
(backbone, head) pair, so a new model is one decorated function away. The built-in names are
listed here too, so that checking a config does not import torch; their modules register them when
a model is first built (a test checks the two agree).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from lstmclf.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from lstmclf.config import ModelConfig

# fn(cfg, in_channels) -> module mapping (B, in_channels, H, W) -> (B, C, h, w)
BackboneFactory = Callable[["ModelConfig", int], "nn.Module"]
# fn(cfg, (C, h, w), num_classes) -> module mapping (B, C, h, w) -> (B, num_classes)
HeadFactory = Callable[["ModelConfig", tuple[int, int, int], int], "nn.Module"]

F = TypeVar("F", bound=Callable[..., object])

BUILTIN_BACKBONES = ("small", "vgg", "resnet", "none")  # lstmclf.models.backbones
BUILTIN_HEADS = ("linear", "lstm")  # lstmclf.models.heads

_BACKBONES: dict[str, BackboneFactory] = {}
_HEADS: dict[str, HeadFactory] = {}


def _register(table: dict, kind: str, name: str) -> Callable[[F], F]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")

    def deco(fn: F) -> F:
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered (by {table[name].__qualname__})")
        table[name] = fn
        return fn

    return deco


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator: register `fn(cfg, in_channels) -> nn.Module` as backbone `name`; duplicates raise."""
    return _register(_BACKBONES, "backbone", name)


def register_head(name: str) -> Callable[[F], F]:
    """Decorator: register `fn(cfg, feat_shape, num_classes) -> nn.Module` as head `name`; duplicates raise."""
    return _register(_HEADS, "head", name)


def _load_builtins() -> None:
    # Lazy: config.py imports only this module (no torch); the built-in models register themselves on import.
    for module in ("lstmclf.models.backbones", "lstmclf.models.heads"):
        importlib.import_module(module)


def backbone_names() -> tuple[str, ...]:
    """The built-in backbones, then any others registered since."""
    return tuple(dict.fromkeys((*BUILTIN_BACKBONES, *_BACKBONES)))


def head_names() -> tuple[str, ...]:
    """The built-in heads, then any others registered since."""
    return tuple(dict.fromkeys((*BUILTIN_HEADS, *_HEADS)))


def get_backbone(name: str) -> BackboneFactory:
    """The factory registered as backbone `name`; ConfigError if there is none."""
    _load_builtins()
    if name not in _BACKBONES:
        raise ConfigError(f"config value model.backbone: {name!r} is not one of {', '.join(_BACKBONES)}")
    return _BACKBONES[name]


def get_head(name: str) -> HeadFactory:
    """The factory registered as head `name`; ConfigError if there is none."""
    _load_builtins()
    if name not in _HEADS:
        raise ConfigError(f"config value model.head: {name!r} is not one of {', '.join(_HEADS)}")
    return _HEADS[name]
