"""Read embedding records (parquet files or folders) as a stream of dicts, with their count."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow.dataset as ds


def parquet_count(path: str | Path) -> int:
    return ds.dataset(str(path), format="parquet").count_rows()


def parquet_records(path: str | Path, batch_size: int = 5000) -> Iterator[dict]:
    dataset = ds.dataset(str(path), format="parquet")
    for batch in dataset.to_batches(batch_size=batch_size):
        yield from batch.to_pylist()
