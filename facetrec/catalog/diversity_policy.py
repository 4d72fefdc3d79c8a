"""A row's diversity policy as the row config declares it (``diversity: {max_per_category, mmr_lambda,
candidates_factor}``); how it is applied to a row's candidates is ``facetrec.serving.diversity``."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

KEYS = ("max_per_category", "mmr_lambda", "candidates_factor")


@dataclasses.dataclass(frozen=True)
class DiversityPolicy:
    max_per_category: int | None = None
    mmr_lambda: float | None = None
    candidates_factor: int = 3

    @property
    def name(self) -> str:
        parts = [p for p, on in (("mmr", self.mmr_lambda is not None), ("max_per_category",
                                                                         self.max_per_category is not None)) if on]
        return "+".join(parts) or "none"

    @property
    def needs_vectors(self) -> bool:
        return self.mmr_lambda is not None and self.mmr_lambda < 1.0

    @classmethod
    def parse(cls, raw: Any, where: str = "diversity") -> "DiversityPolicy":
        """From the row config's mapping; ValueError naming the field."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: a mapping with any of {KEYS}")
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown; allowed {KEYS}")
        cap, lam, factor = raw.get("max_per_category"), raw.get("mmr_lambda"), raw.get("candidates_factor", 3)
        if cap is not None and not _int_in(cap, 1, 100):
            raise ValueError(f"{where}.max_per_category: an integer in 1..100")
        if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0):
            raise ValueError(f"{where}.mmr_lambda: a number in 0..1 (1 = relevance only)")
        if not _int_in(factor, 1, 10):
            raise ValueError(f"{where}.candidates_factor: an integer in 1..10")
        if cap is None and lam is None:
            raise ValueError(f"{where}: set max_per_category and/or mmr_lambda")
        return cls(cap, None if lam is None else float(lam), factor)


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
