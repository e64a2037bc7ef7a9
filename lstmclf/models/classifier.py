"""A registered backbone followed by a registered head, composed into one classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lstmclf.models.backbones import build_backbone
from lstmclf.models.catalog import get_head

if TYPE_CHECKING:
    from lstmclf.config import ModelConfig


class Classifier(nn.Module):
    """backbone (B, C_in, H, W) -> (B, C, h, w), then head -> logits (B, num_classes)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feat_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feat_shape = feat_shape  # (C, h, w) the head was built for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(cfg: ModelConfig, num_classes: int, in_shape: tuple[int, int, int]) -> Classifier:
    """Compose cfg.backbone and cfg.head for images of shape in_shape = (C, H, W).

    The head's sizes (the LSTM's input width, the sequence length) follow from one dry
    forward of the backbone, so any registered backbone works with any image size.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    c, h, w = in_shape
    backbone = build_backbone(cfg, c)
    was_training = backbone.training
    backbone.eval()  # eval: BN must not update its running stats from zeros (nor need B > 1)
    with torch.no_grad():
        feat = backbone(torch.zeros(1, c, h, w))  # (1, C, h', w')
    backbone.train(was_training)
    if feat.dim() != 4:
        raise ValueError(f"backbone {cfg.backbone!r} returned shape {tuple(feat.shape)}, expected (B, C, h, w)")
    feat_shape = (int(feat.shape[1]), int(feat.shape[2]), int(feat.shape[3]))
    head = get_head(cfg.head)(cfg, feat_shape, num_classes)
    return Classifier(backbone, head, feat_shape)
