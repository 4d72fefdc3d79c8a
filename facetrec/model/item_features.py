"""What the item tower reads of an item besides its id, computed the same way at training and at
serving (a new item's vector, ``facetrec.model.item_encoder``): hashed title tokens, the index of each
categorical facet value, the quantile bucket of a number or a date. Index 0 is "absent" everywhere."""

from __future__ import annotations

import math
import re
import zlib
from datetime import date, datetime
from typing import Any, Iterable, Sequence

import numpy as np

TOKEN = re.compile(r"[a-z0-9]+")
EPOCH = date(1970, 1, 1)


def title_tokens(title: str) -> list[str]:
    return TOKEN.findall((title or "").lower())


def stable_hash(token: str, buckets: int) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    return zlib.crc32(token.encode()) % buckets + 1


def title_indices(title: str, buckets: int, width: int) -> list[int]:
    """A title's hashed tokens, at most ``width`` of them."""
    return [stable_hash(t, buckets) for t in title_tokens(str(title or ""))][:width]


def as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [v for v in value if v is not None]
    if isinstance(value, float) and math.isnan(value):
        return []
    return [value]


def category_indices(value: Any, index: dict[str, int]) -> list[int]:
    """The indices of a categorical facet's values (unknown values left out)."""
    return [index[str(v)] for v in as_list(value) if str(v) in index]


def numeric_value(value: Any) -> float:
    """A number, or a date as days since the epoch (NaN: absent or unparseable)."""
    if value is None or isinstance(value, bool):
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, datetime):
        return float((value.date() - EPOCH).days)
    if isinstance(value, date):
        return float((value - EPOCH).days)
    try:
        return float((date.fromisoformat(str(value)[:10]) - EPOCH).days)
    except ValueError:
        return float("nan")


def bucket_index(value: float, bounds: Sequence[float]) -> int:
    """1 + the quantile bucket of ``value`` among ``bounds`` (the ETL's), 0 when it is NaN."""
    if value != value:
        return 0
    return int(np.searchsorted(np.asarray(bounds, dtype=np.float64), value, side="right")) + 1


def pad(rows: Iterable[list[int]], width: int | None = None) -> np.ndarray:
    rows = list(rows)
    width = width or max(1, max((len(r) for r in rows), default=1))
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[:width]
        out[i, :len(row)] = row
    return out
