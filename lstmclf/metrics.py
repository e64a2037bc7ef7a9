"""Classification metrics (torchmetrics): correct across DDP ranks because states are synced on compute().

torchmetrics is imported where a collection is built, not with this module: its package import pulls
in torchvision, torch._dynamo and scipy.signal (about 3 s of CPU), and every Ray process that
unpickles the training loop imports this module, the Train controller and Tune's trial actor too,
which never compute a metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchmetrics import MetricCollection


def metric_collection(num_classes: int, *, detailed: bool = False) -> MetricCollection:
    """Accuracy and macro precision / recall / F1; `detailed` adds per-class scores and the confusion matrix."""
    from torchmetrics import MeanMetric, MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "loss": MeanMetric(),  # mean cross-entropy per image
    }
    if detailed:
        metrics |= {
            "precision_per_class": MulticlassPrecision(num_classes, average=None),
            "recall_per_class": MulticlassRecall(num_classes, average=None),
            "f1_per_class": MulticlassF1Score(num_classes, average=None),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
    return MetricCollection(metrics, compute_groups=False)


def update(metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add one batch; the loss entry gets the batch's mean cross-entropy weighted by its size."""
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    for name, m in metrics.items():
        if name == "loss":
            m.update(loss, weight=labels.numel())
        else:
            m.update(logits, labels)


def to_python(computed: dict[str, torch.Tensor]) -> dict[str, float | list]:
    """Tensors -> floats / nested lists (JSON-ready)."""
    return {k: (v.item() if v.ndim == 0 else v.tolist()) for k, v in computed.items()}
