"""One typed, frozen config for a run: data, model, optim, loss, train, scaling, storage (and the
sections only one job reads: tune, retrain, compare).

Built from YAML/JSON plus dotted overrides (`model.lstm_layers=3`). Every value is checked
here, before Ray starts, so a typo costs one line of output instead of cluster time. The
config is saved next to every checkpoint and metrics record (`Config.to_dict()`), so any
artifact rebuilds its exact model.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lstmclf.errors import ConfigError, shown
from lstmclf.models import catalog  # names only: no torch

AXES = ("rows", "cols", "both")
POOLS = ("last", "mean", "attention")
OPTIMIZERS = ("adam", "nadam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MAX_NAME_BYTES = 128
# A name that is safe as one path component and one object-key segment: registry models, retraining slots.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOSSES = ("cross_entropy", "label_smoothing", "focal")


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}: {msg}")


def _one_of(value: str, key: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    _require(value in allowed, key, f"{shown(value)} is not one of {', '.join(allowed)}")


def _no_credentials(uri: str, key: str) -> None:
    """Refuse `scheme://user:secret@host/...`: configs are saved next to every artifact."""
    _require(
        "@" not in uri.partition("://")[2].split("/", 1)[0],
        key,
        "must not hold credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an "
        "instance role supply them)",
    )


@dataclass(frozen=True)
class DataConfig:
    # "sample": the MNIST sample bundled in the package (no network, no ../shared);
    # otherwise a directory or s3:// URI holding the four IDX files (gzipped or raw).
    path: str = "sample"
    num_classes: int = 0  # 0 = infer from the training labels (max label + 1)
    # Stratified, seeded hold-out from the training files. 0 = none: train on every training image for
    # train.epochs and keep the last epoch (jobs/train.py, jobs/retrain.py without a search; not tuning).
    val_fraction: float = 0.1
    limit_train: int = 0  # 0 = all; else a stratified subset of the training files
    limit_test: int = 0  # 0 = all; else a stratified subset of the test files
    shift: int = 2  # max random shift in pixels, drawn per image on the batch tensor; 0 = off
    rotate: float = 0.0  # max random rotation in degrees, per image, after the shift; 0 = off
    scale: float = 0.0  # max random change of size (0.1: 90% to 110%), per image, with the rotation; 0 = off
    # Elastic distortion, per image, with the rotation (Simard et al. 2003): every pixel moves by uniform
    # noise in [-1, 1] smoothed by a Gaussian of elastic_sigma pixels, times elastic (pixels); 0 = off
    elastic: float = 0.0
    elastic_sigma: float = 4.0
    seed: int = 0  # seed of the split and the subsets (not of training)

    def __post_init__(self) -> None:
        _require(bool(self.path), "data.path", "must not be empty")
        _no_credentials(self.path, "data.path")
        _require(
            self.num_classes == 0 or self.num_classes >= 2,
            "data.num_classes",
            f"{self.num_classes} must be 0 (infer) or >= 2",
        )
        _require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"{self.val_fraction} is outside [0, 1)")
        _require(self.limit_train >= 0, "data.limit_train", f"{self.limit_train} < 0")
        _require(self.limit_test >= 0, "data.limit_test", f"{self.limit_test} < 0")
        _require(0 <= self.shift <= 8, "data.shift", f"{self.shift} is outside [0, 8]")
        _require(0.0 <= self.rotate <= 180.0, "data.rotate", f"{self.rotate} is outside [0, 180]")
        _require(0.0 <= self.scale < 1.0, "data.scale", f"{self.scale} is outside [0, 1)")
        _require(0.0 <= self.elastic <= 100.0, "data.elastic", f"{self.elastic} is outside [0, 100]")
        # The blur's kernel has 2*ceil(3*sigma)+1 taps: bounded, like every size a config sets.
        _require(0.5 <= self.elastic_sigma <= 16.0, "data.elastic_sigma", f"{self.elastic_sigma} is outside [0.5, 16]")

    def augmentation(self) -> dict[str, float]:
        """The training batches' augmentation, as BatchLoader's keyword arguments."""
        keys = ("shift", "rotate", "scale", "elastic", "elastic_sigma")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small"  # small | vgg | resnet | none (pure row-LSTM on the pixels)
    head: str = "lstm"  # lstm | linear (global pooling + FC: the plain-CNN baselines)
    width: int = 16  # base channel count of the small and vgg backbones (resnet is ResNet-18's)
    pretrained: str = ""  # weights file for the backbone (never downloaded); "" = random init
    lstm_layers: int = 2
    hidden: int = 128  # LSTM hidden size per direction
    bidirectional: bool = True
    axis: str = "rows"  # which axis of the feature map is the sequence: rows | cols | both
    pool: str = "last"  # how LSTM outputs become one vector: last | mean | attention
    dropout: float = 0.1  # between LSTM layers and before the classifier

    def __post_init__(self) -> None:
        _one_of(self.backbone, "model.backbone", catalog.backbone_names())
        _one_of(self.head, "model.head", catalog.head_names())
        _one_of(self.axis, "model.axis", AXES)
        _one_of(self.pool, "model.pool", POOLS)
        _require(
            self.backbone != "none" or self.head == "lstm",
            "model.head",
            "backbone 'none' needs head 'lstm' (a linear head on raw pixels is not a model here)",
        )
        _require(4 <= self.width <= 512, "model.width", f"{self.width} is outside [4, 512]")
        _require(1 <= self.lstm_layers <= 8, "model.lstm_layers", f"{self.lstm_layers} is outside [1, 8]")
        _require(1 <= self.hidden <= 4096, "model.hidden", f"{self.hidden} is outside [1, 4096]")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", f"{self.dropout} is outside [0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adam | nadam | adamw | sgd (with momentum, Nesterov)
    lr: float = 3e-3  # peak learning rate of the schedule
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "onecycle"  # onecycle | cosine | constant, stepped every batch
    warmup: float = 0.2  # fraction of the steps spent warming up (onecycle, cosine)
    grad_clip: float = 1.0  # max global gradient norm (keeps the LSTM stable); 0 = off

    def __post_init__(self) -> None:
        _one_of(self.name, "optim.name", OPTIMIZERS)
        _one_of(self.schedule, "optim.schedule", SCHEDULES)
        _require(0.0 < self.lr <= 10.0, "optim.lr", f"{self.lr} is outside (0, 10]")
        _require(0.0 <= self.weight_decay < 1.0, "optim.weight_decay", f"{self.weight_decay} is outside [0, 1)")
        _require(0.0 <= self.momentum < 1.0, "optim.momentum", f"{self.momentum} is outside [0, 1)")
        _require(0.0 <= self.warmup < 1.0, "optim.warmup", f"{self.warmup} is outside [0, 1)")
        _require(self.grad_clip >= 0.0, "optim.grad_clip", f"{self.grad_clip} < 0")


@dataclass(frozen=True)
class LossConfig:
    name: str = "cross_entropy"  # cross_entropy | label_smoothing | focal
    label_smoothing: float = 0.1  # used by label_smoothing
    focal_gamma: float = 2.0  # used by focal

    def __post_init__(self) -> None:
        _one_of(self.name, "loss.name", LOSSES)
        _require(0.0 <= self.label_smoothing < 1.0, "loss.label_smoothing", f"{self.label_smoothing} is outside [0, 1)")
        _require(0.0 <= self.focal_gamma <= 10.0, "loss.focal_gamma", f"{self.focal_gamma} is outside [0, 10]")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 128  # per worker; the global batch is batch_size * num_workers
    eval_batch_size: int = 1024  # per worker
    seed: int = 0  # model init, batch order, augmentation, dropout
    checkpoints_to_keep: int = 2  # best by val_acc (the latest with no validation split); the latest is always kept
    max_failures: int = 1  # worker-group restarts from the latest checkpoint
    # > 0: validate, checkpoint and serve an exponential moving average of the weights (and BatchNorm
    # statistics), updated after every step with this decay (0.999 ~ the last 1,000 steps); 0 = off
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(1 <= self.epochs <= 10_000, "train.epochs", f"{self.epochs} is outside [1, 10000]")
        _require(1 <= self.batch_size <= 65_536, "train.batch_size", f"{self.batch_size} is outside [1, 65536]")
        _require(
            1 <= self.eval_batch_size <= 65_536,
            "train.eval_batch_size",
            f"{self.eval_batch_size} is outside [1, 65536]",
        )
        _require(self.checkpoints_to_keep >= 1, "train.checkpoints_to_keep", f"{self.checkpoints_to_keep} < 1")
        _require(self.max_failures >= -1, "train.max_failures", f"{self.max_failures} < -1 (-1 = retry forever)")
        _require(0.0 <= self.ema_decay < 1.0, "train.ema_decay", f"{self.ema_decay} is outside [0, 1)")


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1  # DDP processes, one per GPU when use_gpu
    use_gpu: bool = False
    cpus_per_worker: int = 1  # also each worker's torch thread count (engine.use_cpus)
    gpus_per_worker: float = 1.0  # only read when use_gpu

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "scaling.num_workers", f"{self.num_workers} < 1")
        _require(self.cpus_per_worker >= 1, "scaling.cpus_per_worker", f"{self.cpus_per_worker} < 1")
        _require(
            0.0 < self.gpus_per_worker <= 8.0, "scaling.gpus_per_worker", f"{self.gpus_per_worker} is outside (0, 8]"
        )


@dataclass(frozen=True)
class StorageConfig:
    path: str = "runs"  # local directory or s3://bucket/prefix: experiments and checkpoints
    name: str = ""  # run (experiment) name under path; "" = the job picks one from the time
    # S3-compatible endpoint (MinIO, SeaweedFS...), e.g. http://minio:9000, for every s3:// URI here and
    # in data.path; "" = AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS. Credentials never go in the
    # config: AWS's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role) supplies them.
    s3_endpoint: str = ""
    registry: str = "registry"  # model registry: local directory or s3://bucket/prefix

    def __post_init__(self) -> None:
        _require(bool(self.path), "storage.path", "must not be empty")
        _require(
            "/" not in self.name and self.name not in (".", ".."),
            "storage.name",
            f"{shown(self.name)} must be a single path component",
        )
        # Ray and Tune build file and directory names from it (a file system allows 255 bytes a name).
        _require(
            len(self.name.encode()) <= MAX_NAME_BYTES and self.name.isprintable(),
            "storage.name",
            f"{shown(self.name)} must be printable and at most {MAX_NAME_BYTES} bytes",
        )
        _require(bool(self.registry), "storage.registry", "must not be empty")
        for key in ("path", "s3_endpoint", "registry"):
            _no_credentials(getattr(self, key), f"storage.{key}")


# The preset search space (lstmclf.space documents the forms): depth, dropout, optimizer, loss, lr.
PRESET_SPACE: dict[str, Any] = {
    "model.lstm_layers": {"randint": [1, 5]},  # 1-4 layers (Tune's randint excludes the upper bound)
    "model.dropout": {"uniform": [0.0, 0.5]},
    "optim.name": {"choice": ["adam", "nadam", "adamw", "sgd"]},
    "optim.lr": {"loguniform": [1.0e-3, 1.0e-2]},
    "loss.name": {"choice": ["cross_entropy", "label_smoothing", "focal"]},
}


@dataclass(frozen=True)
class TuneConfig:
    num_samples: int = 8  # trials drawn from the space (times each grid combination)
    max_concurrent: int = 0  # 0 = as many trials as the cluster's CPUs / GPUs hold at once
    # asha (asynchronous early stopping) | sha (synchronous successive halving: trials wait at each rung
    # for all the others, fewer epochs when few trials run at a time) | fifo (every trial runs all epochs)
    scheduler: str = "asha"
    grace_period: int = 1  # ASHA / SHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # ASHA / SHA: 1 / reduction_factor of the trials go on at each rung
    search: str = "random"  # random (seeded, sampled up front) | optuna (TPE; needs the [tune] extra)
    seed: int = 0  # seed of the sampling
    space: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(PRESET_SPACE))  # key -> distribution

    def __post_init__(self) -> None:
        _require(1 <= self.num_samples <= 10_000, "tune.num_samples", f"{self.num_samples} is outside [1, 10000]")
        _require(self.max_concurrent >= 0, "tune.max_concurrent", f"{self.max_concurrent} < 0")
        _one_of(self.scheduler, "tune.scheduler", ("asha", "sha", "fifo"))
        _one_of(self.search, "tune.search", ("random", "optuna"))
        _require(self.grace_period >= 1, "tune.grace_period", f"{self.grace_period} < 1")
        _require(self.reduction_factor >= 2, "tune.reduction_factor", f"{self.reduction_factor} < 2")


@dataclass(frozen=True)
class RetrainConfig:
    model_name: str = "mnist-lstm"  # the registry model whose champion is retrained and challenged
    # The gate (lstmclf.promotion): the challenger's test accuracy must beat the champion's by at least
    # `margin` (absolute, 0.002 = 0.2 points), McNemar's exact one-sided test on the paired predictions
    # must be significant at `alpha`, and no class's recall may drop by more than `max_recall_drop`.
    margin: float = 0.002
    alpha: float = 0.05
    max_recall_drop: float = 0.02
    test_data: str = ""  # frozen test set: a dataset whose test files both models are scored on; "" = data.path's
    search: bool = False  # a short Ray Tune search (tune.space, tune.num_samples) instead of one training run
    slot_hours: int = 24  # without --slot, the slot is the start time rounded down to this many hours (UTC)
    lease_seconds: int = 600  # a claimed slot is held this long past the holder's last heartbeat

    def __post_init__(self) -> None:
        _require(
            PLAIN_NAME.fullmatch(self.model_name) is not None,
            "retrain.model_name",
            f"{shown(self.model_name)} must be letters, digits, '.', '_' or '-' (at most 128)",
        )
        _no_credentials(self.test_data, "retrain.test_data")
        _require(0.0 <= self.margin < 1.0, "retrain.margin", f"{self.margin} is outside [0, 1)")
        _require(0.0 < self.alpha < 1.0, "retrain.alpha", f"{self.alpha} is outside (0, 1)")
        _require(
            0.0 <= self.max_recall_drop <= 1.0, "retrain.max_recall_drop", f"{self.max_recall_drop} is outside [0, 1]"
        )
        _require(1 <= self.slot_hours <= 24 * 366, "retrain.slot_hours", f"{self.slot_hours} is outside [1, 8784]")
        _require(
            30 <= self.lease_seconds <= 86_400, "retrain.lease_seconds", f"{self.lease_seconds} is outside [30, 86400]"
        )


# The models `jobs/compare.py` trains by default, each a partial `model` section applied to the config's own
# (keys it leaves out keep the config's values): the CNN-LSTM default, the plain CNNs (linear head), the
# pure row-LSTM, and the plain CNNs' backbones under the LSTM head.
PRESET_VARIANTS: dict[str, Any] = {
    "cnn_lstm": {"backbone": "small", "head": "lstm"},
    "vgg": {"backbone": "vgg", "head": "linear"},
    "resnet": {"backbone": "resnet", "head": "linear"},
    "row_lstm": {"backbone": "none", "head": "lstm"},
    "vgg_lstm": {"backbone": "vgg", "head": "lstm"},
    "resnet_lstm": {"backbone": "resnet", "head": "lstm"},
}


@dataclass(frozen=True)
class CompareConfig:
    # name -> partial `model` section; only the model differs between variants, so every one gets the same
    # data, budget, batch and schedule. A file's variants replace the preset; --set compare.variants.NAME={...}
    # adds one.
    variants: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(PRESET_VARIANTS))
    seeds: int = 3  # runs per variant, with train.seed 0, 1, ..., seeds - 1
    alpha: float = 0.05  # significance level of the McNemar verdict (two-sided, per seed)

    def __post_init__(self) -> None:
        model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
        _require(bool(self.variants), "compare.variants", "must name at least one model")
        for name, variant in self.variants.items():
            key = f"compare.variants.{name}"[:200]
            _require(PLAIN_NAME.fullmatch(name) is not None, key, "a name must be letters, digits, '.', '_' or '-'")
            _require(
                isinstance(variant, Mapping) and all(isinstance(k, str) for k in variant),
                key,
                f"must be a mapping of model keys (e.g. {{backbone: vgg, head: linear}}), got {shown(variant)}",
            )
            _require(bool(variant), key, "must set at least one model key (e.g. {backbone: small, head: lstm})")
            for k in variant:
                if k not in model_keys:
                    raise unknown_key(f"{key}.{k}", [f"{key}.{m}" for m in model_keys])
        _require(1 <= self.seeds <= 100, "compare.seeds", f"{self.seeds} is outside [1, 100]")
        _require(0.0 < self.alpha < 1.0, "compare.alpha", f"{self.alpha} is outside (0, 1)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)  # read by jobs/tune.py only
    retrain: RetrainConfig = field(default_factory=RetrainConfig)  # read by jobs/retrain.py only
    compare: CompareConfig = field(default_factory=CompareConfig)  # read by jobs/compare.py only

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Config:
        """Build and validate a config; missing keys take their defaults."""
        return _build(cls, d or {}, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, dotted: Mapping[str, Any]) -> Config:
        """A copy with `{"model.lstm_layers": 3, ...}` applied, validated again."""
        d = self.to_dict()
        for key, value in dotted.items():
            _set_dotted(d, key, value)
        return Config.from_dict(d)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# The sections that say what a model is and how it is trained: its recipe. The others say where and on
# what it runs (retraining takes the champion's recipe and the job's own deployment sections).
RECIPE = ("model", "optim", "loss", "train")


def recipe_values(cfg: Config, keys: Iterable[str]) -> dict[str, Any]:
    """`cfg`'s values of those of the dotted `keys` that belong to the recipe."""
    values = cfg.to_dict()
    return {k: values[k.split(".")[0]][k.split(".")[1]] for k in sorted(keys) if k.split(".")[0] in RECIPE}


# Keys that may change when a run or experiment resumes: how many workers, how failures are handled,
# where the S3 endpoint and the registry are, the promotion gate (it never reaches a checkpoint). Anything
# else would not fit the checkpoints or schedule.
# (Not scaling.num_workers: it sets the batches per epoch, so the LR schedule of the checkpoint.)
RESUMABLE_CHANGES = (
    "scaling.use_gpu",
    "scaling.cpus_per_worker",
    "scaling.gpus_per_worker",
    "train.max_failures",
    "train.checkpoints_to_keep",
    "storage.s3_endpoint",
    "storage.registry",
    "retrain.",
    "compare.alpha",
)


def check_resumable(old: Config, new: Config, what: str) -> None:
    """Refuse to resume `old`'s run or experiment under `new` when a difference would not fit its
    checkpoints or schedule; one ConfigError line naming the first differences."""
    a, b = old.to_dict(), new.to_dict()
    diff = [
        f"{s}.{k}: {shown(a[s][k])} -> {shown(v)}"
        for s in b
        for k, v in b[s].items()
        if v != a[s][k] and not f"{s}.{k}".startswith(RESUMABLE_CHANGES)
    ]
    if diff:
        raise ConfigError(
            f"{what} {new.storage.name} exists with another config ({'; '.join(diff[:4])}); "
            "resume it with the same config or choose a new name"
        )


def dotted_keys(cls: type = Config, prefix: str = "") -> dict[str, type]:
    """Every leaf key of the config as `section.field` -> its type (search spaces check against it)."""
    out: dict[str, type] = {}
    for name, tp in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            out.update(dotted_keys(tp, key + "."))
        else:
            out[key] = tp
    return out


# Mapping-valued fields that `--set` adds one entry to (the preset's, unless a file gave the mapping):
# tune.space.model.hidden={choice: [..]} (the space's own keys are dotted), compare.variants.NAME={...}.
ENTRY_FIELDS = {"tune.space": PRESET_SPACE, "compare.variants": PRESET_VARIANTS}


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    for name, preset in ENTRY_FIELDS.items():
        if key.startswith(f"{name}."):
            section, leaf = name.split(".")
            entries = d.setdefault(section, {})
            if not isinstance(entries, dict):
                raise ConfigError(f"config key {section} is a value, not a section")
            entries = entries.setdefault(leaf, copy.deepcopy(preset))
            if not isinstance(entries, dict):
                raise ConfigError(f"config key {name} is a value, not a section")
            entries[key.removeprefix(f"{name}.")] = value
            return
    *parents, leaf = key.split(".")
    node = d
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(parents[: i + 1])} is a value, not a section")
        node = child
    node[leaf] = value


def unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    """The error for a key that is not a config field, with the closest field as a hint."""
    hint = difflib.get_close_matches(key, list(known), n=1) if len(key) <= 200 else []
    return ConfigError(f"unknown config key {shown(key)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _build(cls: type, d: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(d, Mapping):
        raise ConfigError(f"config section {where} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if key not in hints:
            raise unknown_key(f"{prefix}{key}", [f"{prefix}{k}" for k in hints])
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a section given where a value belongs, etc.
        raise ConfigError(f"config section {where}: {e}") from None


def _coerce(value: Any, tp: type, key: str) -> Any:
    """Accept a value of the field's type; strings from the command line are parsed."""
    bad = ConfigError(f"config value {key}: expected {getattr(tp, '__name__', tp)}, got {shown(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(out):
            raise bad
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if typing.get_origin(tp) is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return copy.deepcopy(dict(value))
        raise ConfigError(f"config value {key}: expected a mapping, got {shown(value)}")
    raise ConfigError(f"config value {key}: unsupported field type {tp!r}")  # pragma: no cover


MAX_YAML_BYTES = 1 << 20  # a config is a few KB; the cap keeps a huge or endless file out of memory


class _AliasRefused(yaml.composer.ComposerError):
    pass


class _PlainYaml(yaml.SafeLoader):
    """Safe YAML without aliases: a few hundred bytes of nested aliases (`&a [*b, *b, ...]`) expand to
    gigabytes once anything walks the result, as every config is walked and saved."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(None, None, "alias", self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load_yaml(data: str | bytes, where: str, error: type[Exception] = ConfigError, *, lenient: bool = False) -> Any:
    """Parse YAML or JSON as plain data: UTF-8, at most MAX_YAML_BYTES, no aliases, no Python objects.
    Anything else raises `error` with one line that starts with `where` (the file, or the value);
    `lenient`: text that is simply not YAML comes back as the string it is."""
    if len(data) > MAX_YAML_BYTES:
        raise error(f"{where} is {len(data):,} bytes; a config is at most {MAX_YAML_BYTES:,}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{where} is not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.load(data, Loader=_PlainYaml)  # a SafeLoader: plain data only
    except _AliasRefused as e:
        raise error(
            f"{where} line {e.problem_mark.line + 1} holds a YAML alias (*name); aliases are not accepted"
        ) from None
    except yaml.YAMLError as e:
        if lenient:
            return data
        mark = getattr(e, "problem_mark", None)
        raise error(f"{where}{f' line {mark.line + 1}' if mark else ''} is not valid YAML/JSON") from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["model.lstm_layers=3", "optim.name=adam"]` -> {"model.lstm_layers": 3, ...} (YAML scalars;
    a value that is not YAML stays a string, and fails the field's type check if it should not be one)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {shown(item)} must look like section.key=value")
        out[key] = load_yaml(raw, f"--set {key[:80]}", lenient=True) if raw.strip() else ""
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain dict (validated later by `Config.from_dict`)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes; a config is at most {MAX_YAML_BYTES:,}")
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    d = load_yaml(raw, f"config file {p}")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return d


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the file (if any), then `section.key=value` overrides; validated as a whole."""
    d = read_config_file(path) if path else {}
    for key, value in parse_overrides(overrides).items():
        _set_dotted(d, key, value)
    return Config.from_dict(d)
