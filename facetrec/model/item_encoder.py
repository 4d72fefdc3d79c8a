"""The exported item encoder: a new item's vector from its title and facets, by the pair's own model.

The nightly embed step writes ``item_encoder.pt`` (TorchScript: the item tower over content given
as tensors: the item's index, 0 for an item the model has no id for; its feature facets' value
indices; its hashed title tokens) and ``item_encoder.json`` (the item ids the model knows, each
feature facet's vocabulary or bucket bounds, the title hashing). The publish step registers both
beside the user encoder (``<models_root>/<model_version>/``), so an item added during the day
(``facetrec.catalog.changes``) gets the vector the nightly job would give it: a known item's is its
trained vector (within float error); a new item's comes from its content alone, which the towers were
trained to use by hiding a share of ids (``id_dropout``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from facetrec.model.item_features import bucket_index, category_indices, numeric_value, pad, title_indices


class ExportedItemEncoder:
    def __init__(self, directory: str | Path):
        import torch

        directory = Path(directory)
        self.directory = directory
        with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export; still loads
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(directory / "item_encoder.pt"))
        meta = json.loads((directory / "item_encoder.json").read_text())
        self.item_index: dict[str, int] = meta["item_index"]
        self.facets: list[dict] = meta["facets"]           # [{name, categorical, values | bounds}] in the tower's order
        self.title_field: str | None = meta.get("title_field", "title")
        self.title_buckets, self.title_width = meta["title_buckets"], meta["title_width"]
        self._value_index = {f["name"]: {v: i + 1 for i, v in enumerate(f["values"])}
                             for f in self.facets if f["categorical"]}
        self.facet_width = max(1, meta.get("facet_width", 1))

    def knows(self, item_id: str) -> bool:
        return item_id in self.item_index

    def reads(self, field: str) -> bool:
        """Whether the tower reads ``field`` (a change to another field leaves the vector as it is)."""
        return field == self.title_field or any(f["name"] == field for f in self.facets)

    def _facet_indices(self, fields: Mapping[str, Any]) -> list[list[int]]:
        out = []
        for facet in self.facets:
            value = fields.get(facet["name"])
            if facet["categorical"]:
                if isinstance(value, bool):
                    value = str(value)
                out.append(category_indices(value, self._value_index[facet["name"]]))
            else:
                index = bucket_index(numeric_value(value), facet["bounds"])
                out.append([index] if index else [])
        return out

    def vectors(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> np.ndarray:
        """(n, D) the vectors of ``(item_id, fields)`` pairs: ``fields`` as the item index holds them
        (title and facets by name)."""
        import torch

        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        ids = np.array([self.item_index.get(item_id, 0) for item_id, _ in items], dtype=np.int64)
        facets = np.zeros((len(items), len(self.facets), self.facet_width), dtype=np.int64)
        for n, (_, fields) in enumerate(items):
            for f, values in enumerate(self._facet_indices(fields)):
                facets[n, f, :len(values[:self.facet_width])] = values[:self.facet_width]
        titles = pad([title_indices(str(fields.get(self.title_field) or ""), self.title_buckets, self.title_width)
                      for _, fields in items], self.title_width)
        with torch.no_grad():
            return self.module(torch.from_numpy(ids), torch.from_numpy(facets), torch.from_numpy(titles)).numpy()

    def vector(self, item_id: str, fields: Mapping[str, Any]) -> np.ndarray:
        return self.vectors([(item_id, fields)])[0]
