"""Turn the ETL's parquet outputs into the integer tensors the model trains on.

Index 0 is padding everywhere: item 0 is "no item", facet value 0 is "absent".
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from facetrec.catalog.schema import CatalogSchema
from facetrec.model.item_features import as_list as _as_list
from facetrec.model.item_features import numeric_value, title_indices
from facetrec.model.item_features import pad as _pad
from facetrec.model.user_encoder import left_pad, user_feature_indices  # noqa: F401 - left_pad re-exported (train)


def etl_schema(etl_dir) -> CatalogSchema:
    """The catalog schema an ETL output was made with (its ``catalog.json``)."""
    path = Path(etl_dir) / "catalog.json"
    return CatalogSchema.from_dict(json.loads(path.read_text()), source=str(path))


def bucket_indices(values: pd.Series, bounds: list[float]) -> np.ndarray:
    """A numeric or date feature's embedding index per item: 1 + its quantile bucket among ``bounds``
    (the ETL's), 0 where the item has no value. Dates count days since the epoch
    (``facetrec.model.item_features``: a new item's is computed the same way)."""
    numbers = np.array([numeric_value(v) for v in values], dtype=np.float64)
    out = np.searchsorted(np.asarray(bounds, dtype=np.float64), numbers, side="right") + 1
    return np.where(np.isnan(numbers), 0, out).astype(np.int64)


@dataclasses.dataclass
class TrainingData:
    item_ids: list[str]                 # item_ids[idx]; idx 0 is padding ("")
    item_facets: dict[str, np.ndarray]  # facet -> (N+1, k) value indices, 0 = absent
    item_titles: np.ndarray             # (N+1, T) hashed title tokens, 0 = padding
    train_counts: np.ndarray            # (N+1,) interactions in the training split
    user_ids: list[str]
    user_features: np.ndarray           # (U, F) categorical feature indices, 0 = unknown
    user_feature_names: list[str]
    user_feature_sizes: list[int]
    facet_sizes: dict[str, int]
    train_seqs: list[np.ndarray]        # item indices, time-ordered
    valid_items: np.ndarray             # (U,)
    test_items: np.ndarray              # (U,)
    histories: list[np.ndarray]         # everything the user did (for serving vectors and seen items)
    data_version: str
    title_buckets: int

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def id_to_idx(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids) if i}


def load_training_data(etl_dir: str | Path, title_buckets: int = 4096, max_title_tokens: int = 12) -> TrainingData:
    etl_dir = Path(etl_dir)
    items = pd.read_parquet(etl_dir / "items.parquet").sort_values("item_idx")
    users = pd.read_parquet(etl_dir / "users.parquet").sort_values("user_id")
    vocab = json.loads((etl_dir / "vocab.json").read_text())
    report = json.loads((etl_dir / "report.json").read_text())
    if list(items["item_idx"]) != list(range(1, len(items) + 1)):
        raise ValueError(f"{etl_dir}/items.parquet: item_idx must be 1..N")

    item_ids = [""] + items["item_id"].astype(str).tolist()
    id_to_idx = {item_id: i for i, item_id in enumerate(item_ids) if i}
    facet_sizes, item_facets = {}, {}
    for facet, values in vocab["item_facets"].items():
        index = {v: i + 1 for i, v in enumerate(values)}
        rows = [[]] + [[index[str(v)] for v in _as_list(x) if str(v) in index] for x in items[facet]]
        item_facets[facet] = _pad(rows)
        facet_sizes[facet] = len(values)
    for facet, bounds in vocab.get("item_buckets", {}).items():
        item_facets[facet] = np.concatenate([[[0]], bucket_indices(items[facet], bounds)[:, None]]).astype(np.int64)
        facet_sizes[facet] = len(bounds) + 1
    titles = [[]] + [title_indices(t, title_buckets, max_title_tokens) for t in items["title"]]
    train_counts = np.concatenate([[0], items["train_count"].to_numpy(dtype=np.float64)])

    names = list(vocab["user_features"])
    user_features = user_feature_indices(vocab["user_features"], users.to_dict("records"))

    def to_idx(seq) -> np.ndarray:
        return np.array([id_to_idx[str(x)] for x in seq], dtype=np.int64)

    return TrainingData(
        item_ids=item_ids, item_facets=item_facets, item_titles=_pad(titles, max_title_tokens),
        train_counts=train_counts, user_ids=users["user_id"].astype(str).tolist(), user_features=user_features,
        user_feature_names=names, user_feature_sizes=[len(vocab["user_features"][n]) for n in names],
        facet_sizes=facet_sizes, train_seqs=[to_idx(s) for s in users["train_items"]],
        valid_items=to_idx(users["valid_item"]), test_items=to_idx(users["test_item"]),
        histories=[to_idx(s) for s in users["history"]], data_version=report.get("data_version", "unknown"),
        title_buckets=title_buckets)
