"""The training step without Ray: losses, optimizers, schedules."""

import numpy as np
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


def test_predictions_are_the_models_argmax_in_order_and_agree_with_its_accuracy(tmp_path):
    """What the promotion gate pairs: every test image's predicted class, in the split's order, from the
    same pass that computes the report (batches of 7 over 50 images: the order must survive them)."""
    from support.inputs import write_checkpoint

    from lstmclf.checkpoint import load_checkpoint, model_from_checkpoint
    from lstmclf.data import Split
    from lstmclf.evaluation import predict

    write_checkpoint(tmp_path)
    state = load_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    test = Split(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50).astype(np.uint8))
    report, predicted = predict(state, test, device=torch.device("cpu"), batch_size=7)
    model, _ = model_from_checkpoint(state)
    x = (torch.from_numpy(test.images).float().unsqueeze(1) - 0.13 * 255) / (0.31 * 255)
    with torch.no_grad():
        expected = model(x).argmax(dim=1).numpy()
    assert predicted.shape == (50,) and (predicted == expected).all()
    assert report["acc"] == pytest.approx((predicted == test.labels).mean()) and report["images"] == 50
