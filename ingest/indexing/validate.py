"""The validation gate a generation must pass before any alias moves."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from elasticsearch import Elasticsearch

from facetrec.catalog.fields import ITEM_VECTOR_FIELD
from facetrec.catalog.rows import Row
from facetrec.errors import Refused
from facetrec.serving import mips
from facetrec.serving.homepage import SearchConfig, recommend
from ingest.indexing.bulk_load import LoadReport


class ValidationFailed(Refused):
    def __init__(self, check: str, message: str, ids: Sequence[str] = ()):
        shown = ", ".join(map(str, list(ids)[:20]))
        super().__init__(f"validation check '{check}' failed: {message}" + (f" (ids: {shown})" if shown else ""))
        self.check, self.ids = check, list(ids)


@dataclasses.dataclass
class ValidationReport:
    checks: list[str] = dataclasses.field(default_factory=list)
    recall: float | None = None


def check_load(report: LoadReport) -> None:
    if report.invalid_count:
        raise ValidationFailed("vectors", f"{report.invalid_count} documents of {report.index} have unusable vectors "
                               f"(first: {report.invalid[0][1]})", [i for i, _ in report.invalid])
    if report.failed_count:
        raise ValidationFailed("bulk", f"{report.failed_count} documents of {report.index} were rejected by "
                               f"Elasticsearch (first: {report.failed[0][1]})", [i for i, _ in report.failed])


def check_count(es: Elasticsearch, index: str, expected: int) -> None:
    actual = es.count(index=index)["count"]
    if actual != expected:
        raise ValidationFailed("count", f"{index} holds {actual} documents, the input had {expected}")


def sample_user_ids(es: Elasticsearch, user_index: str, n: int, seed: int = 42) -> list[str]:
    hits = es.search(index=user_index, size=n, source=False,
                     query={"function_score": {"random_score": {"seed": seed, "field": "_seq_no"}}})["hits"]["hits"]
    return [h["_id"] for h in hits]


def check_rows(es: Elasticsearch, target: SearchConfig, rows: Sequence[Row], user_ids: Sequence[str]) -> None:
    """Every sampled user gets a non-empty result in every row, from the indices in ``target``."""
    empty: dict[str, list[str]] = {}
    for user_id in user_ids:
        page = recommend(es, target, user_id, rows, detailed_errors=True)
        for row in page["rows"]:
            if row.get("error"):
                raise ValidationFailed("rows", f"row {row['id']!r} failed for user {user_id}: {row['error']}")
            if not row["items"]:
                empty.setdefault(row["id"], []).append(user_id)
    if empty:
        detail = "; ".join(f"row {r!r} empty for {len(u)} of {len(user_ids)} users" for r, u in empty.items())
        raise ValidationFailed("rows", detail, next(iter(empty.values())))


def check_recall(es: Elasticsearch, item_index: str, user_vectors: np.ndarray, item_ids: Sequence[str],
                 item_vectors: np.ndarray, k: int, num_candidates: int, minimum: float,
                 item_vector_scale: float | None = None) -> float:
    """Recall@k of the index's knn search against exact dot-product top-k computed in numpy (on
    the raw vectors; the query is sent as the service sends it, reduced when the items are)."""
    exact = np.argsort(-(user_vectors @ item_vectors.T), axis=1)[:, :k]
    searches = []
    for vector in user_vectors:
        query = mips.knn_query(vector) if item_vector_scale is not None else vector.tolist()
        searches += [{"index": item_index}, {"knn": {"field": ITEM_VECTOR_FIELD, "query_vector": query, "k": k,
                                                     "num_candidates": num_candidates}, "size": k, "_source": False}]
    responses = es.msearch(searches=searches)["responses"]
    overlaps = []
    for row, response in zip(exact, responses):
        truth = {str(item_ids[j]) for j in row}
        got = {h["_id"] for h in response["hits"]["hits"]}
        overlaps.append(len(truth & got) / k)
    recall = float(np.mean(overlaps))
    if recall < minimum:
        raise ValidationFailed("recall", f"approximate recall@{k} is {recall:.3f}, below the minimum {minimum}")
    return recall
