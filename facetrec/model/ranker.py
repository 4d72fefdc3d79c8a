"""The ranking stage: a learned ranker (LightGBM LambdaRank) that re-sorts a row's retrieved candidates.

One module computes the ranker's features for the nightly training (``ingest.embedding.ranker_training``), the
offline evaluation and the service, so the three can never disagree about what a feature means.
Every feature is known at serving time from the row's hits (item id, the model's dot product) and
the user document (``seen_item_ids``, oldest first), plus per-item tables written with the ranker:

    retrieval_score, retrieval_rank, score_gap (to the row's best), score_z (within the row)
    log_popularity            log(1 + interactions) in the data the model was trained on
    popularity_in_<facet>     the item's popularity percentile among the items sharing a value of <facet>
    freshness_days            days between the item's publication and the catalog's newest (NaN: unknown)
    affinity_<facet>          the largest share of the user's recent items holding one of the item's values
    recency_<facet>           items since the user last took one with one of its values (history length: never)
    transition_last           how often the user's latest item was followed by this one (a share of its followers)
    transition_recent         the same from the user's last RECENT items, halved per step back
    history_length

A ranker is part of its model version: the three files below are registered beside the exported
user encoder (``<models_root>/<model_version>/``) by the publish step, so a rollback brings back the
pair's own ranker, or none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facetrec.errors import Unavailable

RANKER_META = "ranker.json"
RANKER_FILES = (RANKER_META, "ranker.txt", "ranker_items.npz")
FORMAT = 1
RECENT = 3      # the user's latest items whose followers are features
log = logging.getLogger("facetrec.model.ranker")
# What the response says about the ranking stage (``ranker.status``) and the metric counts.
APPLIED, NOT_ASKED, NO_RANKER, UNAVAILABLE = "applied", "not_asked", "no_ranker", "unavailable"


class RankerUnavailable(Unavailable):
    """The model version declares a ranker whose files are missing or unreadable."""


@dataclasses.dataclass
class ItemTables:
    """Per-item inputs of the features, indexed by item index (0: an item the ranker does not know)."""
    item_ids: np.ndarray                 # (N+1,) str; [0] = ""
    log_popularity: np.ndarray           # (N+1,) float32
    facet_popularity: dict[str, np.ndarray]   # facet -> (N+1,) float32 percentile in 0..1
    freshness_days: np.ndarray           # (N+1,) float32, NaN where the publication date is unknown
    facets: dict[str, np.ndarray]        # facet -> (N+1, k) int32 value indices, 0 = absent
    next_start: np.ndarray               # (N+2,) int64: item a's followers are next_items[next_start[a]:next_start[a+1]]
    next_items: np.ndarray               # int32, sorted within each item
    next_share: np.ndarray               # float32: how often a was followed by that item / a's followers

    @classmethod
    def build(cls, item_ids: Sequence[str], counts: np.ndarray, facets: dict[str, np.ndarray],
              published_days: np.ndarray, sequences: Sequence[np.ndarray] = ()) -> "ItemTables":
        """From interaction counts (N+1,), facet value matrices (N+1, k), publication dates as days
        since the epoch (NaN: unknown), all indexed by item index with row 0 the padding item, and
        the time-ordered item sequences whose consecutive pairs are the transitions."""
        counts = np.asarray(counts, dtype=np.float64)
        n = len(counts)
        pairs = [np.stack([s[:-1], s[1:]], axis=1) for s in sequences if len(s) > 1]
        pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
        keys, followed = np.unique(pairs[:, 0].astype(np.int64) * n + pairs[:, 1], return_counts=True)
        src, dst = keys // n, keys % n
        out_total = np.bincount(src, weights=followed, minlength=n)
        next_start = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]).astype(np.int64)
        facet_popularity = {}
        for name, values in facets.items():
            best = np.zeros(len(counts), dtype=np.float32)
            for value in np.unique(values[values > 0]):
                members = np.flatnonzero((values == value).any(axis=1))
                order = np.argsort(np.argsort(counts[members], kind="stable"), kind="stable")
                pct = (order + 1) / len(members)
                best[members] = np.maximum(best[members], pct.astype(np.float32))
            facet_popularity[name] = best
        published = np.asarray(published_days, dtype=np.float64)
        newest = np.nanmax(published[1:]) if np.isfinite(published[1:]).any() else np.nan
        return cls(item_ids=np.asarray(item_ids, dtype=object), log_popularity=np.log1p(counts).astype(np.float32),
                   facet_popularity=facet_popularity, freshness_days=(newest - published).astype(np.float32),
                   facets={k: np.asarray(v, dtype=np.int32) for k, v in facets.items()},
                   next_start=next_start, next_items=dst.astype(np.int32),
                   next_share=(followed / np.maximum(out_total[src], 1)).astype(np.float32))

    def followers(self, item: int, candidates: np.ndarray) -> np.ndarray:
        """(C,) the share of ``item``'s followers that each candidate is (0: never followed it)."""
        lo, hi = self.next_start[item], self.next_start[item + 1]
        if lo == hi:
            return np.zeros(len(candidates), dtype=np.float32)
        items = self.next_items[lo:hi]
        at = np.minimum(np.searchsorted(items, candidates), len(items) - 1)
        return np.where(items[at] == candidates, self.next_share[lo:hi][at], 0.0).astype(np.float32)

    @property
    def facet_names(self) -> list[str]:
        return list(self.facets)

    def save(self, path: Path) -> None:
        arrays = {"item_ids": self.item_ids.astype(str), "log_popularity": self.log_popularity,
                  "freshness_days": self.freshness_days, "next_start": self.next_start, "next_items": self.next_items,
                  "next_share": self.next_share}
        arrays.update({f"facet_popularity.{k}": v for k, v in self.facet_popularity.items()})
        arrays.update({f"facets.{k}": v for k, v in self.facets.items()})
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> "ItemTables":
        with np.load(path, allow_pickle=False) as blob:
            facets = {k.split(".", 1)[1]: blob[k] for k in blob.files if k.startswith("facets.")}
            return cls(item_ids=blob["item_ids"].astype(object), log_popularity=blob["log_popularity"],
                       facet_popularity={k: blob[f"facet_popularity.{k}"] for k in facets},
                       freshness_days=blob["freshness_days"], facets=facets, next_start=blob["next_start"],
                       next_items=blob["next_items"], next_share=blob["next_share"])


def feature_names(facet_names: Sequence[str]) -> list[str]:
    return ["retrieval_score", "retrieval_rank", "score_gap", "score_z", "log_popularity",
            *(f"popularity_in_{f}" for f in facet_names), "freshness_days",
            *(f"affinity_{f}" for f in facet_names), *(f"recency_{f}" for f in facet_names),
            "transition_last", "transition_recent", "history_length"]


@dataclasses.dataclass
class UserContext:
    """What the features need of one user's history, computed once per page."""
    length: int
    shares: dict[str, np.ndarray]    # facet -> (V+1,) share of the history holding each value
    last: dict[str, np.ndarray]      # facet -> (V+1,) position of the latest history item with the value (-1: none)
    recent: np.ndarray               # the latest RECENT items, latest first


def user_context(tables: ItemTables, history: np.ndarray) -> UserContext:
    """``history``: the user's recent item indices, oldest first (unknown items already dropped)."""
    history = np.asarray(history, dtype=np.int64)
    length = len(history)
    shares, last = {}, {}
    for name, values in tables.facets.items():
        size = int(values.max(initial=0)) + 1
        held = values[history]                                     # (L, k)
        count = np.bincount(held.ravel(), minlength=size).astype(np.float32)
        count[0] = 0.0
        shares[name] = count / max(length, 1)
        latest = np.full(size, -1, dtype=np.int64)
        np.maximum.at(latest, held.ravel(), np.repeat(np.arange(length), held.shape[1]))
        latest[0] = -1
        last[name] = latest
    return UserContext(length, shares, last, history[::-1][:RECENT])


def features(tables: ItemTables, user: UserContext, candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C, F) float32 features of one row's candidates (item indices) with their dot products."""
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    n = len(candidates)
    rank = np.empty(n, dtype=np.float32)
    rank[np.argsort(-scores, kind="stable")] = np.arange(n, dtype=np.float32)
    top = scores.max() if n else 0.0
    spread = float(scores.std()) if n > 1 else 0.0
    columns = [scores, rank, top - scores, (scores - scores.mean()) / spread if spread > 0 else np.zeros(n, np.float32),
               tables.log_popularity[candidates]]
    columns += [tables.facet_popularity[f][candidates] for f in tables.facet_names]
    columns.append(tables.freshness_days[candidates])
    held = {f: tables.facets[f][candidates] for f in tables.facet_names}     # (C, k) each
    columns += [user.shares[f][held[f]].max(axis=1) for f in tables.facet_names]
    for f in tables.facet_names:
        latest = user.last[f][held[f]].max(axis=1)
        columns.append(np.where(latest >= 0, user.length - 1 - latest, user.length).astype(np.float32))
    steps = [tables.followers(int(item), candidates) for item in user.recent]
    columns.append(steps[0] if steps else np.zeros(n, dtype=np.float32))
    columns.append(sum((0.5 ** j) * step for j, step in enumerate(steps)) if steps else np.zeros(n, dtype=np.float32))
    columns.append(np.full(n, user.length, dtype=np.float32))
    return np.column_stack(columns).astype(np.float32, copy=False)


class Ranker:
    """A trained ranker with its item tables: scores candidates, higher first."""

    def __init__(self, booster, tables: ItemTables, meta: dict):
        self.booster, self.tables, self.meta = booster, tables, meta
        self.version = meta["version"]
        self.candidates = int(meta.get("candidates", 100))
        self._index = {item_id: i for i, item_id in enumerate(tables.item_ids) if i}

    @classmethod
    def load(cls, directory: str | Path) -> "Ranker":
        import lightgbm

        directory = Path(directory)
        meta = json.loads((directory / RANKER_META).read_text())
        if meta.get("format") != FORMAT:
            raise RankerUnavailable(f"{directory}/{RANKER_META}: format {meta.get('format')!r}, expected {FORMAT}")
        tables = ItemTables.load(directory / "ranker_items.npz")
        if feature_names(tables.facet_names) != meta["features"]:
            raise RankerUnavailable(f"{directory}: the ranker's features {meta['features']} are not what this "
                                    f"facetrec computes ({feature_names(tables.facet_names)})")
        return cls(lightgbm.Booster(model_file=str(directory / "ranker.txt")), tables, meta)

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.array([self._index.get(i, 0) for i in item_ids], dtype=np.int64)

    def context(self, history_ids: Sequence[str]) -> UserContext:
        known = self.indices(history_ids)
        return user_context(self.tables, known[known > 0])

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return self.booster.predict(matrix, num_threads=1) if len(matrix) else np.zeros(0)

    def rank_rows(self, history_ids: Sequence[str], rows: Sequence[tuple[Sequence[str], Sequence[float]]]) -> list[np.ndarray]:
        """For each row's (item ids, dot products): the candidates' positions, best first. One user
        context and one prediction call for the whole page."""
        user = self.context(history_ids)
        blocks = [features(self.tables, user, self.indices(ids), np.asarray(scores, dtype=np.float32))
                  for ids, scores in rows]
        if not blocks:
            return []
        predicted = self.score(np.concatenate(blocks))
        out, start = [], 0
        for block in blocks:
            part = predicted[start:start + len(block)]
            start += len(block)
            out.append(np.lexsort((np.arange(len(part)), -part)))   # ties keep retrieval order
        return out


def save(directory: str | Path, booster, tables: ItemTables, meta: dict) -> Path:
    """Write the ranker's three files to ``directory`` (the nightly job's ``<work>/ranker/``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(directory / "ranker.txt"))
    tables.save(directory / "ranker_items.npz")
    meta = {**meta, "format": FORMAT, "features": feature_names(tables.facet_names)}
    (directory / RANKER_META).write_text(json.dumps(meta, indent=2))
    return directory


def save_meta(directory: str | Path, meta: dict) -> None:
    """Rewrite a saved ranker's meta with more facts (its measured validation metrics)."""
    path = Path(directory) / RANKER_META
    path.write_text(json.dumps({**json.loads(path.read_text()), **meta}, indent=2))


def register(ranker_dir: str | Path, model_dir: Path) -> bool:
    """Copy a trained ranker beside its model version's encoder (each file written beside, then
    renamed; the meta file last, so a half-copied ranker is never taken for a whole one). False
    when ``ranker_dir`` holds none (that model version serves retrieval order)."""
    src = Path(ranker_dir)
    if not all((src / name).is_file() for name in RANKER_FILES):
        return False
    model_dir.mkdir(parents=True, exist_ok=True)
    unregister(model_dir)   # the old meta goes first: never a new model file beside an old meta
    for name in (*RANKER_FILES[1:], RANKER_META):
        tmp = model_dir / f".{name}.tmp"
        shutil.copyfile(src / name, tmp)
        tmp.replace(model_dir / name)
    return True


def unregister(model_dir: Path) -> None:
    """Remove a ranker registered earlier for this model version (it is published without one)."""
    for name in RANKER_FILES:   # the meta file first: a ranker without it is no ranker
        (Path(model_dir) / name).unlink(missing_ok=True)


class RankerRegistry:
    """Loaded rankers by model version (the few most recent kept), thread-safe. ``get`` answers
    (status, ranker): APPLIED with the ranker, NO_RANKER where the model version has none, and
    UNAVAILABLE where it declares one that cannot be loaded (a missing or broken file)."""

    RECHECK_S = 30.0   # a model version's ranker files are looked at again after this (re-registered, removed)

    def __init__(self, models_root: str | Path, keep: int = 2):
        self.models_root = Path(models_root)
        self.keep = keep
        self._loaded: OrderedDict[str, tuple[tuple[str, Ranker | None], float, float | None]] = OrderedDict()
        self._versions: OrderedDict[str, str | None] = OrderedDict()
        self._lock = threading.Lock()

    def model_version_of(self, user_index: str, read_version: Callable[[str], str | None]) -> str | None:
        """The model version a user index records in its ``_meta`` (read once per index with
        ``read_version``; an index never changes model)."""
        with self._lock:
            if user_index in self._versions:
                return self._versions[user_index]
        version = read_version(user_index)
        with self._lock:
            self._versions[user_index] = version
            while len(self._versions) > 8:
                self._versions.popitem(last=False)
        return version

    def get(self, model_version: str | None) -> tuple[str, Ranker | None]:
        from facetrec.model.user_encoder import model_dir

        if not model_version:
            return NO_RANKER, None
        with self._lock:
            try:
                directory = model_dir(self.models_root, model_version)
            except ValueError:
                return NO_RANKER, None
            if model_version in self._loaded:
                answer, checked, stamp = self._loaded[model_version]
                now = time.monotonic()
                fresh = now - checked < self.RECHECK_S
                if not fresh and answer[0] != UNAVAILABLE and _stamp(directory) == stamp:
                    fresh, checked = True, now     # its files are as they were: keep it, look again later
                if fresh:
                    self._loaded[model_version] = (answer, checked, stamp)
                    self._loaded.move_to_end(model_version)
                    return answer
            stamp = _stamp(directory)
            if not (directory / RANKER_META).is_file():
                answer: tuple[str, Ranker | None] = (NO_RANKER, None)
            else:
                try:
                    answer = (APPLIED, Ranker.load(directory))
                except Exception as exc:  # noqa: BLE001 - a broken ranker serves retrieval order, said so
                    log.warning(
                        "ranker unavailable; rows keep retrieval order",
                        extra={"event": "ranker_unavailable", "model_version": model_version, "detail": str(exc)[:500]})
                    answer = (UNAVAILABLE, None)
            self._loaded[model_version] = (answer, time.monotonic(), stamp)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return answer


def _stamp(directory: Path) -> float | None:
    """When the model version's ranker meta was last written (None: it has none)."""
    try:
        return (directory / RANKER_META).stat().st_mtime_ns
    except OSError:
        return None


def days_since_epoch(values: Sequence) -> np.ndarray:
    """Publication dates (ISO strings, dates or None) as float days since 1970-01-01 (NaN: unknown)."""
    import pandas as pd

    parsed = pd.to_datetime(pd.Series(list(values), dtype=object), errors="coerce", utc=True)
    days = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds() / 86400.0
    return days.to_numpy(dtype=np.float64, na_value=math.nan)
