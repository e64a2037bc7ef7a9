"""Ray Train wiring, the part that runs on the cluster: the per-worker loop (DDP), the callbacks on
Ray Train's controller, and the TorchTrainer that runs them.

Data is read and validated once, on the driver, and handed to the workers through the object
store; each worker keeps the training split in memory on its device (MNIST-sized data) and takes
its shard of every epoch's global shuffle by index, so shards differ from epoch to epoch. Rank 0
writes one checkpoint per epoch; a restart (worker failure, or `fit()` again with the same storage
and name) resumes from the latest one via `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from lstmclf import records, storage
from lstmclf.checkpoint import load_checkpoint, save_checkpoint, upload_checkpoint
from lstmclf.config import Config
from lstmclf.data import BatchLoader, Splits, to_tensors
from lstmclf.driver import send
from lstmclf.engine import (
    build_ema,
    build_loss,
    build_optimizer,
    build_scheduler,
    evaluate,
    place_model,
    synchronize,
    train_epoch,
    use_cpus,
)
from lstmclf.errors import StorageError
from lstmclf.models import build_model

METRIC = "val_acc"  # what "best" means for checkpoints, ASHA and the results table


def score_attribute(cfg: Config) -> str:
    """The reported metric a run's best checkpoints are kept by: validation accuracy, or the epoch
    when there is no validation split (data.val_fraction 0), so that the last epoch is the best."""
    return METRIC if cfg.data.val_fraction > 0 else "epoch"


def data_info(splits: Splits) -> dict[str, Any]:
    """What a checkpoint needs to know about the data to rebuild and feed its model."""
    return {
        "num_classes": splits.num_classes,
        "image_shape": list(splits.image_shape),
        "mean": splits.mean,
        "std": splits.std,
    }


def quiet_report_log() -> None:
    """Ray 2.58 logs every report() at INFO (a 600-character line per rank per epoch) under a logger
    named by its file path instead of `ray.train.*`, so RunConfig's LoggingConfig does not reach it.
    EpochPrinter says the same in one line; raise that one logger to WARNING."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One DDP worker: build, (resume,) train, validate and report every epoch. `loop_config` holds the
    config, the data (or its ObjectRef) and, optionally, `report`: a stand-in for `ray.train.report`
    with its signature (tests inject faults through it)."""
    quiet_report_log()
    report = loop_config.get("report") or ray.train.report
    cfg = Config.from_dict(loop_config["config"])
    import torchmetrics  # noqa: F401  (lstmclf.metrics defers it; loaded here, not in epoch 1's time)

    data = loop_config["data"]
    splits: Splits = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    use_cpus(cfg.scaling.cpus_per_worker)
    torch.manual_seed(cfg.train.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    model = place_model(build_model(cfg.model, splits.num_classes, splits.image_shape), device)
    model_without_ddp = model
    model = ray.train.torch.prepare_model(model)  # DDP when world > 1

    tr = cfg.train
    train_loader = BatchLoader(
        *to_tensors(splits.train, device),
        tr.batch_size,
        mean=splits.mean,
        std=splits.std,
        shuffle=True,
        **cfg.data.augmentation(),
        seed=tr.seed,
        rank=rank,
        world_size=world,
    )
    val_loader = (
        BatchLoader(
            *to_tensors(splits.val, device),
            tr.eval_batch_size,
            mean=splits.mean,
            std=splits.std,
            rank=rank,
            world_size=world,
        )
        if len(splits.val)
        else None  # data.val_fraction 0: every training image trains, nothing is validated
    )
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.optim, optimizer, tr.epochs * len(train_loader))
    loss_fn = build_loss(cfg.loss)
    ema = build_ema(model_without_ddp, tr.ema_decay)
    served = model_without_ddp if ema is None else ema.module  # what is validated, checkpointed and served

    start = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = load_checkpoint(d)
        served.load_state_dict(state["model"])
        if ema is not None:  # the average is "model"; training goes on from the raw weights
            model_without_ddp.load_state_dict(state["train_model"])
            ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["epoch"] + 1

    info = data_info(splits)
    for epoch in range(start, tr.epochs):
        train_loader.set_epoch(epoch)
        torch.manual_seed(tr.seed * 1_000_003 + epoch * 1009 + rank)  # dropout draws, reproducible on resume
        t0 = time.perf_counter()
        loss_sum, seen = train_epoch(
            model, train_loader, optimizer, scheduler, loss_fn, device=device, grad_clip=cfg.optim.grad_clip, ema=ema
        )
        synchronize(device)  # on GPU the epoch's last kernels may still be queued
        train_s = time.perf_counter() - t0
        stats = torch.stack([loss_sum, torch.tensor(float(seen), device=device)])
        if world > 1:
            dist.all_reduce(stats)  # (sum of losses, images) over all ranks
            broadcast_buffers(model_without_ddp)
            if ema is not None:
                broadcast_buffers(ema.module)
        val = {} if val_loader is None else evaluate(served, val_loader, splits.num_classes, device=device)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": stats[0].item() / stats[1].item(),
            **{f"val_{k}": v for k, v in val.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_s": time.perf_counter() - t0,
            "train_img_s": stats[1].item() / train_s,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this worker's peak
            "threads": torch.get_num_threads(),  # what train_img_s was measured with
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(
                    tmp,
                    {
                        "model": served.state_dict(),
                        **(
                            {}
                            if ema is None
                            else {"train_model": model_without_ddp.state_dict(), "ema_updates": ema.updates}
                        ),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "config": cfg.to_dict(),
                        "metrics": metrics,
                        "data": info,
                    },
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            report(
                metrics,
                checkpoint=checkpoint,
                checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
                checkpoint_upload_fn=upload_to_run,
            )


def upload_to_run(checkpoint: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
    """Ray's `checkpoint_upload_fn`: files first, manifest.json last, each retried on transient
    storage errors (Ray's own copy has no order, so an outage could leave a manifest beside half
    the files; ray#47939 is the run that dies of one S3 hiccup)."""
    st = ray.train.get_context().get_storage()
    dest = st.build_checkpoint_path_from_name(dir_name)
    upload_checkpoint(checkpoint.path, st.storage_filesystem, dest)
    return ray.train.Checkpoint(path=dest, filesystem=st.storage_filesystem)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP broadcasts buffers at the start of each
    forward, so after the last step each rank holds its own; evaluating with those would score a
    model that differs from the checkpoint (timm's distribute_bn does the same)."""
    for buf in model.buffers():
        if buf.is_floating_point() or buf.dtype == torch.long:
            dist.broadcast(buf, src=0)


class EpochRecorder(ray.train.UserCallback):
    """Adds each reported epoch to the experiment's Parquet metrics table (`lstmclf.records`); runs
    on the Train controller. A row that still fails after its retries is reported (to the driver's
    console through `sink`, a `driver.Relay` sink), not raised: losing one row must not stop a run
    (every checkpoint keeps its metrics.json too)."""

    def __init__(
        self, table_uri: str, trial_id: str, config: dict[str, Any], endpoint: str = "", sink: Any = None
    ) -> None:
        self.table_uri, self.trial_id, self.config, self.sink = table_uri, trial_id, config, sink
        self.endpoint = storage.endpoint_url(endpoint)  # resolved here: the controller may not share our env

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        m = metrics[0]  # rank 0's
        try:
            records.write_record(self.table_uri, self.trial_id, m["epoch"], self.config, m, endpoint=self.endpoint)
        except StorageError as e:
            send(
                self.sink,
                f"warning: epoch {m['epoch']} of {self.trial_id} is missing from {self.table_uri}: {e}",
                err=True,
            )


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    val = (
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.2%}  val_f1 {m['val_f1']:.4f}  "
        if METRIC in m
        else "no validation split  "
    )
    return (
        f"epoch {m['epoch']}/{epochs}  train_loss {m['train_loss']:.4f}  {val}{m['epoch_s']:.1f}s  "
        f"{m['train_img_s']:,.0f} img/s"
    )


class EpochPrinter(ray.train.UserCallback):
    """One line per epoch on the driver's console (sent through a `driver.Relay` sink: this runs on
    the Train controller)."""

    def __init__(self, epochs: int, sink: Any = None) -> None:
        self.epochs, self.sink = epochs, sink

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        send(self.sink, epoch_line(metrics[0], self.epochs))


def make_trainer(
    cfg: Config,
    data: Any,
    callbacks: list[ray.train.UserCallback] | None = None,
    report: Callable[..., None] | None = None,
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for one config; `data` is the Splits or an ObjectRef to them; `report` replaces
    `ray.train.report` in the loop (see `train_loop_per_worker`)."""
    fs, path = storage.resolve(cfg.storage.path, cfg.storage.s3_endpoint)
    sc = cfg.scaling
    resources: dict[str, float] = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "data": data, "report": report},
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.storage.name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                checkpoint_score_attribute=score_attribute(cfg),
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks or [],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our epoch lines, not Ray's per-report INFO
        ),
    )
