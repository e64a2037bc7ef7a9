"""Classifier heads: feature map (B, C, h, w) -> logits (B, num_classes).

Every factory takes `(cfg, feat_shape, num_classes)`; feat_shape = (C, h, w) comes from a
dry forward of the backbone, so the LSTM's input size fits any image size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lstmclf.models.catalog import register_head

if TYPE_CHECKING:
    from lstmclf.config import ModelConfig


class LinearHead(nn.Module):
    """Global average pool, dropout, linear: the plain-CNN baseline."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (B, C)
        return self.fc(self.dropout(x))  # (B, num_classes)


class SequenceEncoder(nn.Module):
    """An LSTM over a sequence (B, T, F), pooled to one vector (B, out_dim)."""

    def __init__(self, in_features: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.pool = cfg.pool
        self.lstm = nn.LSTM(
            in_features,
            cfg.hidden,
            num_layers=cfg.lstm_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
        )
        self.directions = 2 if cfg.bidirectional else 1
        self.out_dim = self.directions * cfg.hidden
        if cfg.pool == "attention":
            # Only for attention, so that every parameter of the model always gets a gradient.
            self.att_proj = nn.Linear(self.out_dim, cfg.hidden)
            # No bias: softmax ignores a constant shift, so a bias here would never learn.
            self.att_score = nn.Linear(cfg.hidden, 1, bias=False)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        # fp32 even under the GPU's bf16 autocast: autocast sends cuDNN's LSTM to fp16 (seen with torch
        # 2.11 on an H200), whose gradients would need loss scaling. The LSTM is a small part of the step.
        with torch.autocast(seq.device.type, enabled=False):
            out, (h_n, _) = self.lstm(seq.float())  # out (B, T, D*hidden); h_n (layers*D, B, hidden)
        if self.pool == "last":
            # Top layer's final states; for the backward direction that is its state after
            # reading the whole sequence back to t=0, which out[:, -1] would miss.
            top = h_n[-self.directions :]  # (D, B, hidden), forward then backward
            return top.transpose(0, 1).reshape(seq.shape[0], self.out_dim)  # (B, D*hidden)
        if self.pool == "mean":
            return out.mean(dim=1)  # (B, D*hidden)
        scores = self.att_score(torch.tanh(self.att_proj(out)))  # (B, T, 1)
        weights = torch.softmax(scores, dim=1)  # (B, T, 1), sums to 1 over T
        return (weights * out).sum(dim=1)  # (B, D*hidden)


class LSTMHead(nn.Module):
    """Reads the feature map as a sequence of rows, columns, or both (two LSTMs), then classifies."""

    def __init__(self, cfg: ModelConfig, feat_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = feat_shape
        self.axes = ("rows", "cols") if cfg.axis == "both" else (cfg.axis,)
        features = {"rows": c * w, "cols": c * h}  # F of each sequence step
        self.encoders = nn.ModuleDict({a: SequenceEncoder(features[a], cfg) for a in self.axes})
        pooled_dim = sum(e.out_dim for e in self.encoders.values())
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(pooled_dim, num_classes)

    @staticmethod
    def sequence(x: torch.Tensor, axis: str) -> torch.Tensor:
        """(B, C, h, w) -> rows: (B, h, C*w); cols: (B, w, C*h)."""
        b, c, h, w = x.shape
        if axis == "rows":
            return x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # (B, T=h, C*w)
        return x.permute(0, 3, 1, 2).reshape(b, w, c * h)  # (B, T=w, C*h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.encoders[a](self.sequence(x, a)) for a in self.axes]  # each (B, D*hidden)
        z = torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]  # (B, pooled_dim)
        return self.fc(self.dropout(z))  # (B, num_classes)


@register_head("linear")
def linear(cfg: ModelConfig, feat_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Global average pool + FC over the backbone's channels."""
    return LinearHead(feat_shape[0], num_classes, cfg.dropout)


@register_head("lstm")
def lstm(cfg: ModelConfig, feat_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """LSTM over the feature map's rows/columns, pooled by cfg.pool."""
    return LSTMHead(cfg, feat_shape, num_classes)
