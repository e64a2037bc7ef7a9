"""The training step without Ray: losses, optimizers, schedules."""

import itertools

import numpy as np
import pytest
import torch

from lstmclf.config import LOSSES, OPTIMIZERS, SCHEDULES, LossConfig, OptimConfig
from lstmclf.engine import FocalLoss, build_ema, build_loss, build_optimizer, build_scheduler, train_epoch

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
TARGETS = torch.tensor([0, 2, 0, 1])


def lrs_over(cfg: OptimConfig, total: int) -> list[float]:
    """The learning rate of every step of a `total`-step run (as the loop steps it: after each batch)."""
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    sched = build_scheduler(cfg, opt, total)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs[:total]  # the rate each of the `total` steps used


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_a_mean_per_image_and_learns(name):
    loss_fn = build_loss(LossConfig(name=name))
    logits = LOGITS.clone().requires_grad_(True)
    loss = loss_fn(logits, TARGETS)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # A confidently right batch costs less than a confidently wrong one.
    right = loss_fn(torch.eye(3)[TARGETS[:3]] * 10, TARGETS[:3])
    wrong = loss_fn(torch.eye(3)[(TARGETS[:3] + 1) % 3] * 10, TARGETS[:3])
    assert right < wrong


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_down_weights_easy_images():
    ce = torch.nn.functional.cross_entropy(LOGITS, TARGETS)
    assert FocalLoss(0.0)(LOGITS, TARGETS).item() == pytest.approx(ce.item(), rel=1e-6)
    per_image_ce = torch.nn.functional.cross_entropy(LOGITS, TARGETS, reduction="none")
    p_true = torch.exp(-per_image_ce)
    expected = ((1 - p_true) ** 2 * per_image_ce).mean()
    assert FocalLoss(2.0)(LOGITS, TARGETS).item() == pytest.approx(expected.item(), rel=1e-6)
    assert FocalLoss(2.0)(LOGITS, TARGETS) < ce


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    eps, k = 0.1, LOGITS.shape[1]
    smooth = torch.full((len(TARGETS), k), eps / k).scatter_(1, TARGETS[:, None], 1 - eps + eps / k)
    expected = -(smooth * torch.log_softmax(LOGITS, dim=1)).sum(dim=1).mean()
    got = build_loss(LossConfig(name="label_smoothing", label_smoothing=eps))(LOGITS, TARGETS)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert build_loss(LossConfig(name="cross_entropy", label_smoothing=eps))(LOGITS, TARGETS).item() == pytest.approx(
        torch.nn.functional.cross_entropy(LOGITS, TARGETS).item(), rel=1e-6
    )  # label_smoothing is read by its own loss only


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_a_step_that_lowers_the_loss(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    cfg = OptimConfig(name=name, lr=0.05, weight_decay=0.0)
    opt = build_optimizer(cfg, model.parameters())
    x = torch.randn(16, 3)
    y = torch.randint(0, 3, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    first = torch.nn.functional.cross_entropy(model(x), y)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert torch.nn.functional.cross_entropy(model(x), y) < first
    assert opt.param_groups[0]["lr"] == cfg.lr
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == cfg.momentum and opt.param_groups[0]["nesterov"]


def test_ema_is_off_at_decay_zero():
    assert build_ema(torch.nn.Linear(2, 2), 0.0) is None


def test_ema_averages_weights_and_batchnorm_statistics_with_a_warming_decay():
    """The average starts as a copy, then moves (1 - d_n) of the way to the model after update n, with
    d_n = min(decay, (1 + n) / (10 + n)); BatchNorm's running mean is averaged, its batch count copied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = build_ema(model, 0.3)
    expected_w, expected_mean = None, None
    for n in range(4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()(torch.randn(8, 3))  # moves BatchNorm's running mean and its batch count
        w, mean = model[0].weight.detach().clone(), model[1].running_mean.clone()
        if n == 0:
            expected_w, expected_mean = w, mean
        else:
            d = min(0.3, (1 + n) / (10 + n))
            expected_w, expected_mean = d * expected_w + (1 - d) * w, d * expected_mean + (1 - d) * mean
        ema.update(model)
    averaged = ema.module
    torch.testing.assert_close(averaged[0].weight, expected_w)
    torch.testing.assert_close(averaged[1].running_mean, expected_mean)
    assert not torch.allclose(averaged[0].weight, model[0].weight)  # an average, not the last weights
    assert averaged[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 4
    assert ema.updates == 4


def test_ema_update_reads_nothing_back_from_the_device():
    """A host read of a device value (the update count for the warming decay) stalls a GPU every step. On
    the meta device, which holds no values, any such read raises (the AveragedModel version failed here)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).to("meta")
    ema = build_ema(model, 0.999)
    for _ in range(3):
        ema.update(model)
    assert ema.updates == 3 and ema.module[0].weight.device.type == "meta"


def test_train_epoch_updates_the_ema_after_every_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = build_ema(model, 0.99)
    before = ema.module.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    train_epoch(model, batches, opt, sched, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"), ema=ema)
    assert ema.updates == 5
    assert not torch.equal(ema.module.weight, before) and not torch.equal(ema.module.weight, model.weight)


def test_onecycle_warms_up_to_the_peak_then_anneals():
    lrs = lrs_over(OptimConfig(schedule="onecycle", lr=0.01, warmup=0.2), 100)
    peak = max(range(100), key=lrs.__getitem__)
    assert 18 <= peak <= 21 and lrs[peak] == pytest.approx(0.01, rel=1e-3)
    assert lrs[0] < 0.01 / 20  # OneCycle starts at max_lr / 25
    assert all(a <= b for a, b in itertools.pairwise(lrs[: peak + 1])) and lrs[-1] < 1e-5


def test_cosine_warms_up_linearly_then_decays_to_zero():
    lrs = lrs_over(OptimConfig(schedule="cosine", lr=0.01, warmup=0.1), 100)
    assert lrs[:10] == pytest.approx([0.01 * (i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(0.01) and all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 89 / 90)), rel=1e-6)
    assert lrs_over(OptimConfig(schedule="cosine", lr=0.01, warmup=0.0), 10)[0] == pytest.approx(0.01)


def test_constant_stays_at_the_peak():
    assert lrs_over(OptimConfig(schedule="constant", lr=0.02, warmup=0.3), 7) == [0.02] * 7


@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_gradient_clipping_bounds_the_global_norm(clip):
    """train_epoch clips the gradients' global norm before each step (0 = off)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
            return super().step(closure)

    opt = Spy(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    batches = [(torch.randn(8, 3) * 100, torch.randint(0, 3, (8,))) for _ in range(3)]
    train_epoch(model, batches, opt, sched, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"), grad_clip=clip)
    assert len(seen) == 3
    assert all(n <= clip * (1 + 1e-5) for n in seen) if clip else any(n > 1.0 for n in seen)


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
