"""The training step, free of Ray: losses, optimizers, schedules, one epoch, evaluation.

Ray's train loop (lstmclf.worker) and the plain-PyTorch baseline in bench/ call the same functions,
so a throughput comparison between them measures Ray's overhead and nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable
from itertools import compress

import torch
from torch import nn

from lstmclf.config import LossConfig, OptimConfig
from lstmclf.metrics import metric_collection, to_python, update


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, mean over the batch."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)  # (B,)
        return (-(1.0 - logp.exp()).pow(self.gamma) * logp).mean()


def build_loss(cfg: LossConfig) -> nn.Module:
    if cfg.name == "focal":
        return FocalLoss(cfg.focal_gamma)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing if cfg.name == "label_smoothing" else 0.0)


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay
        )
    cls = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam, "adamw": torch.optim.AdamW}[cfg.name]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch over the whole run (`total_steps` = epochs * batches per epoch)."""
    if cfg.schedule == "onecycle":
        pct = max(cfg.warmup, 1e-3)
        if pct * total_steps == 1:  # OneCycleLR divides by zero when its warm-up ends exactly at step 0
            pct = 1.5 / total_steps
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct)
    warm = int(cfg.warmup * total_steps) if cfg.schedule == "cosine" else 0

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (BatchNorm statistics), kept in
    `module`, a copy of the model on its device. After n updates the next moves it (1 - d) of the way to
    the model, d = min(decay, (1 + n) / (10 + n)), so the early epochs' average is not dominated by the
    random initialisation; the first update copies, and integer buffers (BatchNorm's batch count) are
    copied. The update count is a host integer, so an update reads nothing back from the device: built on
    torch's AveragedModel, the warming decay read the count from the GPU every step (a stall)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0
        # Sorted once, not every step: floating tensors are averaged, the rest (batch counts) copied.
        self._tensors = [*self.module.parameters(), *self.module.buffers()]
        self._is_float = [t.is_floating_point() for t in self._tensors]
        self._is_other = [not f for f in self._is_float]
        self._floats = list(compress(self._tensors, self._is_float))
        self._others = list(compress(self._tensors, self._is_other))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if len(theirs) != len(self._tensors):
            raise ValueError(f"the model has {len(theirs)} tensors, its average {len(self._tensors)}")
        if self.updates == 0:
            torch._foreach_copy_(self._tensors, theirs)
        else:
            d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
            torch._foreach_lerp_(self._floats, list(compress(theirs, self._is_float)), 1.0 - d)
            if self._others:
                torch._foreach_copy_(self._others, list(compress(theirs, self._is_other)))
        self.updates += 1


def build_ema(model: nn.Module, decay: float) -> WeightAverage | None:
    """A WeightAverage of `model` (the unwrapped model, not its DDP wrapper), or None when `decay` is 0."""
    return WeightAverage(model, decay) if decay > 0.0 else None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU (no loss scaling needed); full precision on CPU, where bf16 is slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_cpus(cpus: int) -> None:
    """Size torch's intra-op thread pool to the CPUs Ray reserved for this process. Ray's
    OMP_NUM_THREADS does not reach torch in Ray Train's workers, and torch's default, every core of
    the machine, oversubscribes it: two 1-CPU trials on 2 cores ran four compute threads and trained
    at a quarter of the expected rate."""
    torch.set_num_threads(max(int(cpus), 1))


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on `device`, in channels_last: bf16 convolutions on a GPU run faster in it, and so do
    oneDNN's fp32 ones on a CPU (training step 1.40x for the fast recipe, 1.14x for the default model on
    2 cores: bench/memory_format.py). Inputs stay NCHW: the first convolution's output is channels_last."""
    return model.to(device=device, memory_format=torch.channels_last)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU (kernels run asynchronously), so a timer read next counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    grad_clip: float = 0.0,
    ema: WeightAverage | None = None,
) -> tuple[torch.Tensor, int]:
    """One pass over `batches`; returns (sum of per-image losses as a device tensor, images seen).
    `ema` (from `build_ema` on the unwrapped model) is updated after every step.

    The loss stays on the device (no .item() per step), so the GPU is never stalled for logging.
    """
    model.train()
    total = torch.zeros((), device=device)
    seen = 0
    for x, y in batches:
        with autocast(device):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            # DDP's parameters and buffers are its module's, in the same order; unwrapped to be sure.
            ema.update(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)
        total += loss.detach().float() * len(y)
        seen += len(y)
    return total, seen


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    detailed: bool = False,
    predictions: list[torch.Tensor] | None = None,
) -> dict[str, float | list]:
    """Accuracy, macro precision / recall / F1 and mean cross-entropy over `batches`; each batch's
    predicted classes are appended (on the CPU) to `predictions` when given, in the batches' order.

    Under torch.distributed each rank passes its own shard; torchmetrics sums the states of all
    ranks in compute(), so every rank gets the metrics of the whole set.
    """
    model.eval()
    metrics = metric_collection(num_classes, detailed=detailed).to(device)
    for x, y in batches:
        with autocast(device):
            logits = model(x)
        update(metrics, logits.float(), y)
        if predictions is not None:
            predictions.append(logits.argmax(dim=1).cpu())
    return to_python(metrics.compute())
