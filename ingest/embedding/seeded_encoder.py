"""A seeded, untrained user tower over a frozen item table, exported the way the nightly embed step
exports a trained one: a real encoder for tests and benchmarks of the events path (API and stream)
without training a model. ``user_vector`` is the eager tower (what the nightly job computes)."""

from __future__ import annotations

import os

import numpy as np
import torch

from facetrec.model.user_encoder import left_pad


class SeededUserModel:
    """A seeded user tower over a frozen item table: the eager computation the nightly job does."""

    def __init__(self, item_vectors: np.ndarray, item_ids: list[str], max_len: int = 50):
        from ingest.embedding.model import ModelConfig, SequenceUserEncoder, UserTower

        torch.manual_seed(7)
        self.max_len = max_len
        self.table = np.vstack([np.zeros((1, item_vectors.shape[1]), np.float32), item_vectors]).astype(np.float32)
        self.index = {item_id: i + 1 for i, item_id in enumerate(item_ids)}
        self.tower = UserTower(ModelConfig(dim=item_vectors.shape[1], max_len=max_len, dropout=0.0), []).eval()
        self.eager = SequenceUserEncoder(self.tower, torch.from_numpy(self.table)).eval()

    def user_vector(self, history: list[str]) -> np.ndarray:
        seq = np.array([self.index[i] for i in history if i in self.index], dtype=np.int64)
        with torch.no_grad():
            return self.eager(torch.from_numpy(left_pad([seq], self.max_len)), torch.zeros((1, 0), dtype=torch.int64))[0].numpy()

    def export(self, out) -> None:
        from ingest.embedding.embed import save_user_encoder

        os.makedirs(out, exist_ok=True)
        save_user_encoder(self.tower, self.table, out, max_len=self.max_len, item_index=self.index,
                          feature_names=[], feature_vocab={}, example_histories=[np.array([1, 2, 3])],
                          example_features=np.zeros((1, 0), dtype=np.int64))
