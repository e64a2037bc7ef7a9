"""The training step without Ray: losses, optimizers, schedules."""

import pytest
import torch

from lstmclf.config import SCHEDULES, OptimConfig
from lstmclf.engine import build_optimizer, build_scheduler


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("total", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("warmup", [0.0, 0.2, 0.5])
def test_schedules_step_through_tiny_runs(schedule, total, warmup):
    """A run of a handful of steps (a smoke test, a tiny slice) steps every schedule to its end;
    OneCycleLR itself divides by zero when its warm-up ends exactly at step 0 (0.2 x 5 steps)."""
    cfg = OptimConfig(schedule=schedule, warmup=warmup, lr=0.01)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    sched = build_scheduler(cfg, opt, total)
    lrs = []
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0.0 <= lr <= cfg.lr * (1 + 1e-9) for lr in lrs)
