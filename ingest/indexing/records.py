"""Read embedding records (parquet files or folders) as a stream of dicts, with their count, the
largest vector norm of a record source (the item vector scale of ``facetrec.serving.mips``) and the counts
of the values of the facets whose values get a vector partition (``facetrec.catalog.partitions``)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.dataset as ds


def parquet_count(path: str | Path) -> int:
    return ds.dataset(str(path), format="parquet").count_rows()


class ParquetRecords:
    """The records of a parquet file or folder: iterable (any number of times) as dicts."""

    def __init__(self, path: str | Path, batch_size: int = 5000):
        self.path, self.batch_size = str(path), batch_size

    def __iter__(self) -> Iterator[dict]:
        for batch in ds.dataset(self.path, format="parquet").to_batches(batch_size=self.batch_size):
            yield from batch.to_pylist()

    def max_norm(self, column: str) -> float:
        """The largest finite norm of the vectors in ``column``, reading only that column."""
        largest = 0.0
        dataset = ds.dataset(self.path, format="parquet")
        for batch in dataset.to_batches(columns=[column], batch_size=self.batch_size):
            largest = max(largest, _largest_norm(batch.column(0).to_pylist()))
        return largest


    def value_counts(self, column: str) -> "ValueCounts":
        """How many records hold each value of ``column`` (a list column counts each value once per
        record), reading only that column; a file without the column counts nothing."""
        dataset = ds.dataset(self.path, format="parquet")
        counts = ValueCounts()
        if column not in dataset.schema.names:
            counts.records = dataset.count_rows()
            return counts
        for batch in dataset.to_batches(columns=[column], batch_size=self.batch_size):
            _count_values(counts, batch.column(0).to_pylist())
        return counts


def parquet_records(path: str | Path, batch_size: int = 5000) -> ParquetRecords:
    return ParquetRecords(path, batch_size)


def max_vector_norm(source: Any, column: str) -> float:
    """The largest finite norm of ``column`` over a record source: a ``ParquetRecords``, a Spark
    DataFrame or a list of dicts. Missing and non-finite vectors are skipped here (the load reports
    them, and any vector of the wrong length). A one-pass iterator cannot be read twice, so it is
    refused."""
    if isinstance(source, ParquetRecords):
        return source.max_norm(column)
    if hasattr(source, "rdd"):
        from pyspark.sql import functions as F

        squares = F.aggregate(F.col(column), F.lit(0.0).cast("double"), lambda acc, x: acc + x.cast("double") * x)
        norm = F.sqrt(squares)
        finite = ~F.isnan(norm) & (norm != F.lit(float("inf")))
        value = source.select(F.max(F.when(finite, norm)).alias("m")).first()["m"]
        return float(value) if value is not None and math.isfinite(value) else 0.0
    if isinstance(source, Sequence):
        return _largest_norm(record.get(column) for record in source)
    raise TypeError(f"cannot read {type(source).__name__} twice to find the largest {column} norm: "
                    "pass a list, parquet_records(path) or a Spark DataFrame")


class ValueCounts(Counter):
    """A facet's value counts, plus how many records were read (``records``) and how many of them
    hold exactly one value (``single``): a facet whose every record has one value partitions the
    catalog (``facetrec.catalog.partitions.covering``)."""

    def __init__(self, *args, records: int = 0, single: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.records, self.single = records, single


def facet_value_counts(source: Any, facets: Sequence[str]) -> dict[str, ValueCounts]:
    """For each facet, how many records of ``source`` hold each of its values (a multi-valued facet
    counts each distinct value of a record once). Same sources as ``max_vector_norm``."""
    if not facets:
        return {}
    if isinstance(source, ParquetRecords):
        return {facet: source.value_counts(facet) for facet in facets}
    if hasattr(source, "rdd"):
        from pyspark.sql import functions as F
        from pyspark.sql.types import ArrayType

        out: dict[str, ValueCounts] = {}
        records = source.count()
        for facet in facets:
            if facet not in source.columns:
                out[facet] = ValueCounts(records=records)
                continue
            column = F.col(facet)
            if isinstance(source.schema[facet].dataType, ArrayType):
                distinct = F.array_distinct(F.filter(column, lambda v: v.isNotNull()))
                single = source.where(F.size(distinct) == 1).count()
                column = F.explode(distinct)
            else:
                single = source.where(column.isNotNull()).count()
            rows = source.select(column.alias("v")).where(F.col("v").isNotNull()).groupBy("v").count().collect()
            out[facet] = ValueCounts({str(r["v"]): int(r["count"]) for r in rows}, records=records, single=single)
        return out
    if isinstance(source, Sequence):
        out = {facet: ValueCounts() for facet in facets}
        for record in source:
            for facet in facets:
                _count_values(out[facet], [record.get(facet)])
        return out
    raise TypeError(f"cannot read {type(source).__name__} twice to count its facet values: "
                    "pass a list, parquet_records(path) or a Spark DataFrame")


def _count_values(counts: "ValueCounts", values) -> None:
    """Count the values of some records' facet (one entry per record: a value, a list or None)."""
    for value in values:
        counts.records += 1
        if value is None:
            continue
        if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            value = value.tolist() if hasattr(value, "tolist") else value
            if isinstance(value, list):
                distinct = {str(v) for v in value if v is not None}
                counts.update(distinct)
                counts.single += len(distinct) == 1
                continue
        counts[str(value)] += 1
        counts.single += 1


def _largest_norm(vectors) -> float:
    largest = 0.0
    for vector in vectors:
        try:
            values = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        norm = float(np.linalg.norm(values)) if values.ndim == 1 else math.nan
        if math.isfinite(norm):
            largest = max(largest, norm)
    return largest
