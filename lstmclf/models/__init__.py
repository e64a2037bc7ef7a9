"""The model family: a registered backbone followed by a registered head, as plain PyTorch.

Free of Ray and of the training loop, so a checkpoint's config alone rebuilds its model. The
names (`lstmclf.models.catalog`) load without torch, so a config is checked without it; the
torch-backed parts load on first use.
"""

from __future__ import annotations

from typing import Any

from lstmclf.models.catalog import backbone_names, head_names, register_backbone, register_head

__all__ = [
    "Classifier",
    "backbone_names",
    "build_backbone",
    "build_model",
    "head_names",
    "register_backbone",
    "register_head",
]


def __getattr__(name: str) -> Any:  # PEP 562: torch is imported when a model is first built
    if name in ("Classifier", "build_model"):
        from lstmclf.models import classifier

        return getattr(classifier, name)
    if name == "build_backbone":
        from lstmclf.models.backbones import build_backbone

        return build_backbone
    raise AttributeError(f"module 'lstmclf.models' has no attribute {name!r}")
