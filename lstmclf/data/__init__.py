"""MNIST-format data: IDX reading and validation, stratified splits, in-memory batch loading."""

from lstmclf.data.dataset import (
    SAMPLE,
    Split,
    Splits,
    build_splits,
    dataset_digest,
    load_splits,
    load_test,
    prepare_dataset,
    read_arrays,
    sample_dir,
)
from lstmclf.data.idx import encode_idx, parse_idx
from lstmclf.data.loader import BatchLoader, random_shift, random_warp, to_tensors

__all__ = [
    "SAMPLE",
    "BatchLoader",
    "Split",
    "Splits",
    "build_splits",
    "dataset_digest",
    "encode_idx",
    "load_splits",
    "load_test",
    "parse_idx",
    "prepare_dataset",
    "random_shift",
    "random_warp",
    "read_arrays",
    "sample_dir",
    "to_tensors",
]
