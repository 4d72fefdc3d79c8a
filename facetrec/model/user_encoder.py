"""The exported user encoder: a user vector from an item-id sequence with only torch and two files.

The nightly embed step writes ``user_encoder.pt`` (TorchScript: the user tower with the item
tower's outputs frozen into a table) and ``user_encoder.json`` (item id -> index, max_len, user
feature vocabularies). The publish step registers them under ``<models_root>/<model_version>/``, so
whoever holds a live pair's model version (the events endpoint, the streaming job, the user
refresh) recomputes a user vector exactly as the nightly job would for the same history.
"""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from facetrec.errors import Unavailable

ENCODER_FILES = ("user_encoder.pt", "user_encoder.json")


class EncoderUnavailable(Unavailable):
    """No exported encoder is registered for a model version (or it cannot be used as asked)."""

    code = "encoder_unavailable"
    public = ("the live model's user encoder is not available to this service; the event batch is logged and will "
              "be applied with the next generation (operators: see the service log)")
    log_event = "encoder_unavailable"


def left_pad(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """(B, max_len) with each sequence's last max_len items right-aligned; 0 = padding."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, seq in enumerate(seqs):
        tail = seq[-max_len:]
        if len(tail):
            out[i, -len(tail):] = tail
    return out


def user_feature_indices(vocab: dict[str, list[str]], records: list[dict]) -> np.ndarray:
    """(U, F) indices of each user's categorical features in the model's vocabulary (0 = unknown or
    missing). The one mapping used in training, the nightly embedding and the user refresh."""
    index = {name: {v: i + 1 for i, v in enumerate(values)} for name, values in vocab.items()}
    rows = [[index[name].get(str(r.get(name)), 0) if r.get(name) is not None else 0 for name in vocab]
            for r in records]
    return np.array(rows, dtype=np.int64).reshape(len(records), len(vocab))


class ExportedUserEncoder:
    """Recompute a user vector from a fresh event sequence with only torch and the exported files."""

    def __init__(self, directory: str | Path):
        import torch

        directory = Path(directory)
        self.directory = directory
        with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export; still loads
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(directory / "user_encoder.pt"))
        meta = json.loads((directory / "user_encoder.json").read_text())
        self.max_len, self.item_index = meta["max_len"], meta["item_index"]
        self.interests = int(meta.get("interests", 1))   # K interest vectors per user (1: one user vector)
        self.feature_names = meta["user_features"]
        self.feature_vocab = meta.get("user_feature_vocab")
        if self.feature_names and self.feature_vocab is None:
            raise ValueError(f"{directory}/user_encoder.json has user features {self.feature_names} but no "
                             "vocabulary for them (exported before facetrec recorded it): re-run the embed step")

    def feature_indices(self, users: list[dict]) -> np.ndarray:
        """(U, F) feature indices of raw user records ({feature name: value}) in the model's vocabulary."""
        return user_feature_indices(self.feature_vocab or {}, users)

    def knows(self, item_id: str) -> bool:
        return item_id in self.item_index

    def user_vectors(self, histories: list[list[str]], features: np.ndarray, batch: int = 512) -> np.ndarray:
        """(U, D) user vectors of many histories (item ids) with their feature indices, batched: a
        multi-interest model's current interest (``user_interests(...)[:, 0]``)."""
        out = self.user_interests(histories, features, batch)
        return out if out.ndim == 2 else out[:, 0]

    def user_interests(self, histories: list[list[str]], features: np.ndarray, batch: int = 512) -> np.ndarray:
        """(U, D), or (U, K, D) for a model of K interests (the current one first), of many histories
        (item ids) with their feature indices, batched. Items the model never saw are skipped (they have
        no row in the frozen item table)."""
        import torch

        out = []
        for start in range(0, len(histories), batch):
            seqs = [np.array([self.item_index[i] for i in h if i in self.item_index], dtype=np.int64)
                    for h in histories[start:start + batch]]
            feats = np.asarray(features[start:start + batch], dtype=np.int64).reshape(len(seqs), len(self.feature_names))
            with torch.no_grad():
                out.append(self.module(torch.from_numpy(left_pad(seqs, self.max_len)), torch.from_numpy(feats)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def user_vector(self, item_ids: list[str], feature_indices: list[int] | None = None) -> np.ndarray:
        features = np.array([feature_indices or [0] * len(self.feature_names)], dtype=np.int64)
        return self.user_vectors([item_ids], features)[0]


def model_dir(models_root: str | Path, model_version: str) -> Path:
    """Where a model version's exported encoder is registered."""
    if not model_version or "/" in model_version or model_version.startswith("."):
        raise ValueError(f"not a usable model version for a directory name: {model_version!r}")
    return Path(models_root) / model_version


ITEM_ENCODER_FILES = ("item_encoder.pt", "item_encoder.json")
_FILES = {"user": ENCODER_FILES, "item": ITEM_ENCODER_FILES}


def _loader(kind: str):
    if kind == "item":
        from facetrec.model.item_encoder import ExportedItemEncoder

        return ExportedItemEncoder
    return ExportedUserEncoder


def register(embeddings_dir: str | Path, models_root: str | Path, model_version: str) -> Path:
    """Copy the embed step's exported encoders (the user encoder, and the item encoder where the
    export has one) to ``<models_root>/<model_version>/`` (atomically per file: written beside, then
    renamed), so a pair never goes live without its encoders."""
    dst = model_dir(models_root, model_version)
    dst.mkdir(parents=True, exist_ok=True)
    names = [*ENCODER_FILES, *(ITEM_ENCODER_FILES if all((Path(embeddings_dir) / n).is_file()
                                                         for n in ITEM_ENCODER_FILES) else ())]
    for name in names:
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(Path(embeddings_dir) / name, tmp)
        tmp.replace(dst / name)
    return dst


class EncoderRegistry:
    """Loaded encoders by model version (the few most recent kept), thread-safe: what the service
    and the streaming job ask for a live pair's model. The user encoder by default; ``kind="item"``:
    the item encoder a new item's vector comes from (``facetrec.model.item_encoder``)."""

    def __init__(self, models_root: str | Path, keep: int = 2, threads: int | None = None, kind: str = "user"):
        self.models_root = Path(models_root)
        self.keep = keep
        self.threads = threads   # torch threads (the service: 1 per worker; one short sequence needs no more)
        self.kind = kind
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_version: str | None) -> Any:
        if not model_version:
            raise EncoderUnavailable(f"the live {self.kind} index records no model version: republish it")
        with self._lock:
            if model_version in self._loaded:
                self._loaded.move_to_end(model_version)
                return self._loaded[model_version]
            directory = model_dir(self.models_root, model_version)
            if not all((directory / name).is_file() for name in _FILES[self.kind]):
                raise EncoderUnavailable(
                    f"no exported {self.kind} encoder for model {model_version!r} in {directory}: the publish step "
                    f"registers it (`facetrec pipeline run`); copy <work>/embeddings/{self.kind}_encoder.{{pt,json}} "
                    "there or set FACETREC_MODELS_ROOT to where they are")
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            encoder = _loader(self.kind)(directory)
            self._loaded[model_version] = encoder
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return encoder
