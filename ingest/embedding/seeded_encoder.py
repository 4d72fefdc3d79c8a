"""A seeded, untrained user tower over a frozen item table, exported the way the nightly embed step
exports a trained one: a real encoder for tests and benchmarks of the events path (API and stream)
without training a model. ``user_vector`` is the eager tower (what the nightly job computes). Its
``export`` also writes a seeded item encoder reading titles only (a new item added during the day
gets a vector from it, as from a trained model's)."""

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
        self.export_item_encoder(out)

    def export_item_encoder(self, out, title_buckets: int = 4096, title_width: int = 8) -> None:
        """A seeded item tower over titles alone (no id: every item is new to it), traced and described
        as ``ingest.embedding.embed.export_item_encoder`` writes a trained one."""
        import json
        import warnings
        from pathlib import Path

        from ingest.embedding.model import ContentItemEncoder, ItemTower, ModelConfig

        torch.manual_seed(11)
        dim = self.table.shape[1]
        cfg = ModelConfig(dim=dim, hidden=dim, dropout=0.0, item_facets=False)
        tower = ItemTower(cfg, 1, {}, title_buckets, {}, torch.zeros((2, title_width), dtype=torch.int64)).eval()
        example = (torch.zeros(2, dtype=torch.int64), torch.zeros((2, 0, 1), dtype=torch.int64),
                   torch.ones((2, title_width), dtype=torch.int64))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(ContentItemEncoder(tower).eval(), example, check_trace=False)
        traced.save(str(Path(out) / "item_encoder.pt"))
        (Path(out) / "item_encoder.json").write_text(json.dumps({
            "item_index": {}, "facets": [], "facet_width": 1, "title_field": "title",
            "title_buckets": title_buckets, "title_width": title_width}))
