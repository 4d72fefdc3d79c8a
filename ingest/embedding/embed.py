"""Batch-embed all items and users to parquet (what the indexer loads), and export the user tower
so a user vector can be recomputed from a fresh event sequence without the training code.

    out/items.parquet      item_id, item_embed, model_version + catalog facets, popularity
    out/users.parquet      user_id, user_embed, model_version, seen_item_ids, updated_at
    out/user_encoder.pt    TorchScript: (item index sequence (B, L), user features (B, F)) -> (B, D)
    out/user_encoder.json  item_id -> index, user feature vocabularies, max_len
(loaded by ``facetrec.model.user_encoder``; the publish step registers both under the models root)
"""

from __future__ import annotations

import json
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from facetrec.catalog.fields import MAX_SEEN_ITEMS as MAX_SEEN  # the one bound of the seen-item exclusion
from facetrec.model.user_encoder import ExportedUserEncoder, left_pad  # noqa: F401 - ExportedUserEncoder re-exported
from ingest.embedding.features import TrainingData
from ingest.embedding.model import ContentItemEncoder, SequenceUserEncoder, TwoTower, current_interest_first


def item_matrix(model: TwoTower, n_items: int, batch: int = 8192, progress: bool = False) -> np.ndarray:
    """(N+1, D) item vectors; row 0 is padding."""
    model.eval()
    out = np.zeros((n_items + 1, model.cfg.dim), dtype=np.float32)
    with torch.no_grad():
        for start in tqdm(range(0, n_items + 1, batch), desc="embed items", disable=not progress, file=sys.stderr):
            idx = torch.arange(start, min(start + batch, n_items + 1))
            out[start:start + len(idx)] = model.item_tower(idx).numpy()
    return out


def user_vectors(model: TwoTower, seqs: list[np.ndarray], user_features: np.ndarray, batch: int = 512,
                 progress: bool = False) -> np.ndarray:
    """(U, D) the user vector after each item-index sequence (its last max_len items), with the
    matching rows of user features, in batches: what serving, evaluation and the served evaluation
    score with. A multi-interest model's: its current interest (``current_interest_first``), what a
    row without an interest of its own is searched with."""
    interests = user_interest_vectors(model, seqs, user_features, batch, progress)
    return interests if interests.ndim == 2 else interests[:, 0]


def user_interest_vectors(model: TwoTower, seqs: list[np.ndarray], user_features: np.ndarray, batch: int = 512,
                          progress: bool = False) -> np.ndarray:
    """(U, D), or (U, K, D) for a model of K interests, the current interest first: every interest
    vector after each sequence, as the exported user encoder computes them."""
    model.eval()
    k = model.cfg.interests
    out = np.zeros((len(seqs), model.cfg.dim) if k == 1 else (len(seqs), k, model.cfg.dim), dtype=np.float32)
    with torch.no_grad():
        for start in tqdm(range(0, len(seqs), batch), desc="embed users", disable=not progress, file=sys.stderr):
            chunk = torch.from_numpy(left_pad(seqs[start:start + batch], model.cfg.max_len))
            feats = torch.from_numpy(np.asarray(user_features[start:start + batch], dtype=np.int64))
            vectors = model.last_user_vector(chunk, feats)
            if k > 1:
                vectors = current_interest_first(vectors, model.item_tower(chunk[:, -1]))
            out[start:start + len(chunk)] = vectors.numpy()
    return out


def user_matrix(model: TwoTower, data: TrainingData, batch: int = 512, progress: bool = False) -> np.ndarray:
    """(U, D) user vectors from each user's whole recent history (the serving-time vector)."""
    return user_vectors(model, data.histories, data.user_features, batch, progress)


def _vector_column(matrix: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=pa.float32()), matrix.shape[1])


def export_embeddings(model: TwoTower, data: TrainingData, etl_dir, out_dir, model_version: str,
                      progress: bool = True) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = pd.read_parquet(Path(etl_dir) / "items.parquet").sort_values("item_idx")
    vectors = item_matrix(model, data.n_items, progress=progress)
    write_item_embeddings(out / "items.parquet", items, vectors[1:], model_version)

    interests = user_interest_vectors(model, data.histories, data.user_features, progress=progress)
    users = interests if interests.ndim == 2 else interests[:, 0]
    write_user_embeddings(out / "users.parquet", data.user_ids, users,
                          [[data.item_ids[i] for i in h] for h in data.histories], model_version,
                          interests=interests if interests.ndim == 3 else None)
    vocab = json.loads((Path(etl_dir) / "vocab.json").read_text())
    export_user_encoder(model, data, vectors, out, {name: vocab["user_features"][name] for name in data.user_feature_names})
    export_item_encoder(model, data, vocab, out)
    return {"items": out / "items.parquet", "users": out / "users.parquet", "user_encoder": out / "user_encoder.pt",
            "n_items": int(len(items)), "n_users": int(len(users))}


ETL_ONLY_COLUMNS = ("item_id", "item_idx", "train_count")   # the ETL's bookkeeping, not the item's


def write_item_embeddings(path: Path, items: pd.DataFrame, vectors: np.ndarray, model_version: str) -> None:
    """items.parquet as the indexer loads it: the ETL's items (in item_idx order) with their vectors:
    everything the catalog schema made of each item (title, image, url, its facets) and its popularity."""
    columns = {"item_id": pa.array(items["item_id"].astype(str)), "item_embed": _vector_column(vectors),
               "model_version": pa.array([model_version] * len(items))}
    table = pa.Table.from_pandas(items, preserve_index=False)
    for name in table.column_names:
        if name not in ETL_ONLY_COLUMNS:
            columns[name] = table.column(name)
    pq.write_table(pa.table(columns), path)


def write_user_embeddings(path: Path, user_ids: list[str], vectors: np.ndarray, histories: list[list[str]],
                          model_version: str, interests: np.ndarray | None = None) -> None:
    """users.parquet as the indexer loads it; seen_item_ids keeps each history's last MAX_SEEN items;
    a multi-interest model's users also carry ``user_interests`` (K vectors, the current one first,
    which is ``user_embed``)."""
    now = datetime.now(timezone.utc).isoformat()
    columns = {"user_id": pa.array(user_ids), "user_embed": _vector_column(vectors.astype(np.float32)),
               "model_version": pa.array([model_version] * len(user_ids)),
               "seen_item_ids": pa.array([h[-MAX_SEEN:] for h in histories], type=pa.list_(pa.string())),
               "updated_at": pa.array([now] * len(user_ids))}
    if interests is not None:
        columns["user_interests"] = pa.array(interests.astype(np.float32).tolist(),
                                             type=pa.list_(pa.list_(pa.float32())))
    pq.write_table(pa.table(columns), path)


def export_user_encoder(model: TwoTower, data: TrainingData, item_vectors: np.ndarray, out: Path,
                        user_feature_vocab: dict[str, list[str]]) -> Path:
    return save_user_encoder(model.user_tower, item_vectors, out, max_len=model.cfg.max_len,
                             item_index=data.id_to_idx, feature_names=data.user_feature_names,
                             feature_vocab=user_feature_vocab, example_histories=data.histories[:2],
                             example_features=data.user_features[:2])


def export_item_encoder(model: TwoTower, data: TrainingData, vocab: dict, out: Path) -> Path:
    """Trace the item tower over content (``ContentItemEncoder``) to ``out/item_encoder.pt`` and write
    ``out/item_encoder.json`` (what ``facetrec.model.item_encoder.ExportedItemEncoder`` loads): a known
    item's vector from it equals its exported vector, a new item's comes from its title and facets."""
    tower = model.item_tower.eval()
    facets = []
    for name in tower.facet_names:
        if name in vocab.get("item_buckets", {}):
            facets.append({"name": name, "categorical": False, "bounds": vocab["item_buckets"][name]})
        else:
            facets.append({"name": name, "categorical": True, "values": vocab["item_facets"][name]})
    width = max([data.item_facets[name].shape[1] for name in tower.facet_names] or [1])
    example_ids = torch.arange(1, min(3, data.n_items + 1))
    example_facets = torch.zeros((len(example_ids), len(tower.facet_names), width), dtype=torch.int64)
    for i, name in enumerate(tower.facet_names):
        matrix = torch.from_numpy(data.item_facets[name])[example_ids]
        example_facets[:, i, :matrix.shape[1]] = matrix
    example = (example_ids, example_facets, torch.from_numpy(data.item_titles)[example_ids])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ContentItemEncoder(tower).eval(), example, check_trace=False)
    path = Path(out) / "item_encoder.pt"
    traced.save(str(path))
    (Path(out) / "item_encoder.json").write_text(json.dumps({
        "item_index": data.id_to_idx, "facets": facets, "facet_width": width, "title_field": "title",
        "title_buckets": data.title_buckets, "title_width": int(data.item_titles.shape[1])}))
    return path


def save_user_encoder(user_tower, item_vectors: np.ndarray, out: Path, *, max_len: int, item_index: dict[str, int],
                      feature_names: list[str], feature_vocab: dict[str, list[str]],
                      example_histories: list[np.ndarray], example_features: np.ndarray) -> Path:
    """Trace the user tower over the frozen (N+1, D) item table to ``out/user_encoder.pt`` and write
    ``out/user_encoder.json`` (what ``facetrec.model.user_encoder.ExportedUserEncoder`` loads)."""
    encoder = SequenceUserEncoder(user_tower, torch.from_numpy(item_vectors)).eval()
    example = (torch.from_numpy(left_pad(example_histories, max_len)), torch.from_numpy(example_features))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, example, check_trace=False)
    path = Path(out) / "user_encoder.pt"
    traced.save(str(path))
    (Path(out) / "user_encoder.json").write_text(json.dumps({
        "max_len": max_len, "item_index": item_index, "user_features": feature_names,
        "user_feature_vocab": feature_vocab, "interests": int(getattr(user_tower, "interests", 1))}))
    return path
