"""Every reported epoch as one row of a Parquet table per experiment, readable without Ray.

One small file per (trial, epoch): `{table}/trial_id=<id>/epoch=<n>.parquet`. Each is written
whole (a temporary name and a rename locally, one PUT on S3), so a reader never sees half a row,
concurrent trials never contend, and an epoch reported again (after a restart) replaces its row.
Every file carries all its columns (trial_id, epoch, every metric, the flattened config, reported_at),
so the directory is one table for `pyarrow.dataset.dataset(table_uri, format="parquet")`, with or
without `partitioning="hive"`; `read_metrics` also merges the schemas of differing trials.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lstmclf import storage
from lstmclf.errors import StorageError


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """`{"model": {"hidden": 32}}` -> `{"model.hidden": 32}`; values that are themselves mappings or
    lists (a search space) become JSON text, so every trial's row has the same column types."""
    out: dict[str, Any] = {}
    for section, values in config.items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        for key, value in items:
            name = f"{section}.{key}" if key else section
            out[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
    return out


def record_path(table_path: str, trial_id: str, epoch: int) -> str:
    return f"{table_path}/trial_id={quote(trial_id, safe='')}/epoch={epoch}.parquet"


def write_record(
    table_uri: str, trial_id: str, epoch: int, config: dict[str, Any], metrics: dict[str, Any], *, endpoint: str = ""
) -> str:
    """Write one epoch's row (retried on transient storage errors); returns the file's path."""
    row: dict[str, Any] = {"trial_id": trial_id, "epoch": int(epoch)}
    row |= {k: v for k, v in metrics.items() if k not in row and isinstance(v, (int, float, str, bool))}
    row |= {k: v for k, v in flatten_config(config).items() if k not in row}
    row["reported_at"] = dt.datetime.now(dt.UTC)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row]), buf)
    fs, path = storage.resolve(table_uri, endpoint)
    target = record_path(path, trial_id, epoch)
    storage.write_file(fs, target, buf.getvalue())
    return target


def read_metrics(table_uri: str, endpoint: str = "") -> pa.Table:
    """The whole table, sorted by trial and epoch (empty if nothing was recorded yet); the read is
    retried on transient storage errors."""
    fs, path = storage.resolve(table_uri, endpoint)
    if not storage.exists(fs, path):
        return pa.table({"trial_id": pa.array([], pa.string()), "epoch": pa.array([], pa.int64())})

    def read() -> pa.Table:
        dataset = ds.dataset(path, filesystem=fs, format="parquet")
        # Trials of one experiment may differ in columns or in int/float: read them all as one schema.
        schema = pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()], promote_options="permissive")
        return ds.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table()

    try:
        table = storage.retry(read, f"reading the metrics table {table_uri}")
    except OSError as e:
        raise StorageError(f"cannot read the metrics table {table_uri}: {storage.redact(str(e))}") from None
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
