"""Online/offline parity: the offline metrics, measured again on what the service returns.

The evaluation-time user vectors (each user's history before the held-out item) and the item
vectors are published, through the same re-index code as the nightly run, to a separate pair of
indices behind their own aliases (``item_index_eval`` / ``user_index_eval``: the live aliases never
move). Every evaluation user's page is then asked through the service's own code
(``facetrec.serving.homepage.recommend``: the user GET by ``_id``, one ``_msearch``, the configured index
type, retrieval mode and ``num_candidates``, the seen-item exclusion), with one row of 10 items and
no filters. HR@10 / NDCG@10 of those rows sit beside the in-memory full ranking of the same
vectors, so the loss from ANN and serving is visible (including the service's seen-item bound:
the last MAX_SEEN_ITEMS of a history are excluded, the offline ranking excludes all of it).
With a ranker trained for the model (``ingest.embedding.ranker_training``), the same users are asked again
with the row ranked (``rank: {candidates}``, the ranker registered with the model version as the
publish step registers it) beside the offline ranked ranking of the same vectors.
Evaluation generations are kept under the same retention as live ones (``FACETREC_GENERATIONS_TO_KEEP``).

With the run's row config, every user's homepage is asked as well (``served_rows``): per row, how
often the user's held-out item is among the row's items (a hit of that row), the page's hit rate (in
any row), the catalog coverage of all pages, and each row's intra-list diversity (the mean cosine
distance between its items' vectors).

    facetrec evaluate --served [--split test] [--users N]
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facetrec.settings import Settings

EVAL_ALIAS_SUFFIX = "_eval"
TOP_K = 10


def served_metrics(ranked: list[list[str]], targets: list[str], k: int = TOP_K) -> dict:
    """HR@k and NDCG@k of served rankings (item ids, best first) against one held-out item each."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings for {len(targets)} targets")
    hits, gains = 0, 0.0
    for items, target in zip(ranked, targets):
        top = items[:k]
        if target in top:
            hits += 1
            gains += 1.0 / math.log2(top.index(target) + 2)
    n = max(len(targets), 1)
    return {f"HR@{k}": hits / n, f"NDCG@{k}": gains / n, "users": len(targets)}


def eval_settings(settings: Settings) -> Settings:
    """The same cluster and index type, behind aliases of their own."""
    return settings.replace(item_alias=settings.item_alias + EVAL_ALIAS_SUFFIX,
                            user_alias=settings.user_alias + EVAL_ALIAS_SUFFIX)


def evaluation_vectors(model, data, split: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """(user vectors after each evaluation input sequence (U, D), or every interest of a multi-interest
    model (U, K, D), the current one first; item vectors (N+1, D); the input sequences; the held-out
    items): exactly what the offline evaluation scores."""
    from ingest.embedding.embed import item_matrix, user_interest_vectors
    from ingest.embedding.evaluate import split_inputs

    seqs, targets = split_inputs(data, split)
    return (user_interest_vectors(model, seqs, data.user_features, batch=256), item_matrix(model, data.n_items), seqs,
            targets)


def publish_evaluation_pair(settings: Settings, etl_dir: Path, data, model_version: str, user_vectors: np.ndarray,
                            item_vectors: np.ndarray, seqs: list[np.ndarray], progress: bool = True,
                            catalog=None) -> dict:
    """Publish the evaluation vectors as a new generation of the evaluation aliases (``catalog``: the
    run's row catalog, whose facets the pair then holds; default: one unfiltered row)."""
    import pandas as pd

    from facetrec.catalog.rows import RowCatalog
    from facetrec.es import make_client
    from ingest.embedding.embed import write_item_embeddings, write_user_embeddings
    from ingest.indexing.records import parquet_records
    from ingest.indexing.reindex import run_reindex

    catalog = catalog or RowCatalog.from_dict({"rows": [{"id": "eval", "title": "served evaluation", "size": TOP_K}]})
    items = pd.read_parquet(Path(etl_dir) / "items.parquet").sort_values("item_idx")
    with tempfile.TemporaryDirectory(prefix="facetrec-served-eval-") as tmp:
        items_path, users_path = Path(tmp) / "items.parquet", Path(tmp) / "users.parquet"
        write_item_embeddings(items_path, items, item_vectors[1:], model_version)
        write_user_embeddings(users_path, data.user_ids, user_vectors if user_vectors.ndim == 2 else user_vectors[:, 0],
                              [[data.item_ids[i] for i in seq] for seq in seqs], model_version,
                              interests=user_vectors if user_vectors.ndim == 3 else None)
        return run_reindex(make_client(settings, request_timeout=300), settings, catalog,
                           items=parquet_records(items_path), users=parquet_records(users_path),
                           expected_items=len(items), expected_users=len(data.user_ids),
                           model_version=model_version, progress=progress)


def served_rankings(settings: Settings, user_ids: list[str], progress: bool = True,
                    rank_candidates: int | None = None) -> list[list[str]]:
    """Each user's row of TOP_K items, asked exactly as the service asks a homepage (ranked by the
    pair's ranker over ``rank_candidates`` when given: a ranker must then have run on every page)."""
    from facetrec.catalog.rows import Row
    from facetrec.es import make_client
    from facetrec.serving.homepage import SearchConfig, recommend

    es = make_client(settings)
    target = SearchConfig.from_settings(settings, request_timeout_s=max(settings.es_request_timeout_s, 10.0))
    row = Row(id="eval", title="served evaluation", size=TOP_K, rank_candidates=rank_candidates)
    out = []
    for user_id in tqdm(user_ids, desc="served pages", disable=not progress, file=sys.stderr):
        page = recommend(es, target, user_id, [row], detailed_errors=True)
        entry = page["rows"][0]
        if "error" in entry:
            raise RuntimeError(f"the served evaluation row failed for user {user_id}: {entry['error']}")
        if entry["source"] != "personalized":
            raise RuntimeError(f"user {user_id} is missing from {settings.user_alias}: the evaluation pair is "
                               "incomplete; run `facetrec evaluate --served` again")
        if rank_candidates and page["ranker"]["status"] != "applied":
            raise RuntimeError(f"the ranked row of user {user_id} was not ranked: {page['ranker']['status']}")
        out.append([item["id"] for item in entry["items"]])
    return out


def served_rows(settings: Settings, catalog, user_ids: list[str], targets: list[str],
                item_vectors: dict[str, np.ndarray], progress: bool = True) -> dict:
    """Every user's homepage (the row config's rows, as the service serves them): per row its hit rate
    (the held-out item among its items), the page's hit rate, coverage and each row's intra-list
    diversity (mean cosine distance between its items' vectors)."""
    from facetrec.es import make_client
    from facetrec.serving.homepage import SearchConfig, recommend

    es = make_client(settings)
    target = SearchConfig.from_settings(settings, request_timeout_s=max(settings.es_request_timeout_s, 10.0))
    rows = catalog.homepage_rows()
    hits = {row.id: 0 for row in rows}
    diversity: dict[str, list[float]] = {row.id: [] for row in rows}
    page_hits, shown = 0, set()
    for user_id, wanted in tqdm(list(zip(user_ids, targets)), desc="served homepages", disable=not progress,
                                file=sys.stderr):
        page = recommend(es, target, user_id, rows, detailed_errors=True)
        on_page = False
        for row, entry in zip(rows, page["rows"]):
            ids = [item["id"] for item in entry.get("items", [])]
            shown.update(ids)
            hits[row.id] += wanted in ids
            on_page = on_page or wanted in ids
            vectors = [item_vectors[i] for i in ids if i in item_vectors]
            if len(vectors) > 1:
                unit = np.array(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
                sims = unit @ unit.T
                n = len(unit)
                diversity[row.id].append(float(1.0 - (sims.sum() - n) / (n * (n - 1))))
        page_hits += on_page
    n = max(len(user_ids), 1)
    return {"rows": {row.id: {"hit_rate": hits[row.id] / n, "size": row.size,
                              "intra_list_diversity": float(np.mean(diversity[row.id])) if diversity[row.id] else None}
                     for row in rows},
            "page_hit_rate": page_hits / n, "coverage": len(shown) / max(len(item_vectors), 1), "users": len(user_ids)}


def evaluate_served(model, data, etl_dir: Path, model_version: str, settings: Settings, split: str = "test",
                    users: int = 0, progress: bool = True, ranker_dir: Path | None = None, catalog=None) -> dict:
    """{"offline": metrics of the in-memory full ranking, "served": metrics of the served rows,
    "delta": served - offline, "index_type", "mode", "generation"} on the same users and vectors;
    with ``ranker_dir`` (the model's trained ranker) also "offline_ranked", "served_ranked" and
    "delta_ranked"."""
    from facetrec.model import ranker as ranking
    from facetrec.model import user_encoder
    from ingest.embedding.evaluate import ranking_metrics
    from ingest.embedding.ranker_training import ranked_scorer

    interests, item_vectors, seqs, targets = evaluation_vectors(model, data, split)
    user_vectors = interests if interests.ndim == 2 else interests[:, 0]   # the current interest: an unfiltered row's
    settings = eval_settings(settings)
    published = publish_evaluation_pair(settings, etl_dir, data, model_version, interests, item_vectors, seqs,
                                        progress, catalog)
    rows = np.arange(len(seqs))
    if users and users < len(rows):
        rows = np.sort(np.random.default_rng(0).choice(len(rows), users, replace=False))
    offline = ranking_metrics(user_vectors[rows] @ item_vectors.T, targets[rows], [seqs[r] for r in rows],
                              data.n_items)
    ranked = served_rankings(settings, [data.user_ids[r] for r in rows], progress)
    served = served_metrics(ranked, [data.item_ids[targets[r]] for r in rows])
    keys = (f"HR@{TOP_K}", f"NDCG@{TOP_K}")
    result = {"split": split, "index_type": settings.index_type, "mode": settings.retrieval_mode,
              "generation": published.get("generation"), "item_alias": settings.item_alias,
              "user_alias": settings.user_alias,
              "offline": {k: offline[k] for k in (*keys, "users")}, "served": served,
              "delta": {k: served[k] - offline[k] for k in keys}}
    if ranker_dir is not None:
        # The ranker as the publish registers it, in a models root of the evaluation's own (the
        # service's root is only ever written by a publish).
        settings = settings.replace(models_root=Path(tempfile.mkdtemp(prefix="facetrec-served-eval-models-")))
        ranking.register(ranker_dir, user_encoder.model_dir(settings.models_root, model_version))
        ranker = ranking.Ranker.load(ranker_dir)
        scorer = ranked_scorer(model, data, ranker)
        scores = np.concatenate([scorer([seqs[r] for r in part], part) for part in np.array_split(rows, max(1, len(rows) // 256))])
        offline_ranked = ranking_metrics(scores, targets[rows], [seqs[r] for r in rows], data.n_items)
        try:
            ranked_rows = served_rankings(settings, [data.user_ids[r] for r in rows], progress,
                                          rank_candidates=ranker.candidates)
        finally:
            import shutil

            shutil.rmtree(settings.models_root, ignore_errors=True)
        served_ranked = served_metrics(ranked_rows, [data.item_ids[targets[r]] for r in rows])
        result.update({"ranker": ranker.version, "offline_ranked": {k: offline_ranked[k] for k in (*keys, "users")},
                       "served_ranked": served_ranked,
                       "delta_ranked": {k: served_ranked[k] - offline_ranked[k] for k in keys}})
    if catalog is not None:   # the homepage as the row config serves it (its ranked rows unranked here)
        by_id = {data.item_ids[i]: item_vectors[i] for i in range(1, len(item_vectors))}
        result["homepage"] = served_rows(settings, catalog, [data.user_ids[r] for r in rows],
                                         [data.item_ids[targets[r]] for r in rows], by_id, progress)
    return result


def parity_table(result: dict) -> str:
    header = f"{'ranking':<34} {'HR@10':>7} {'NDCG@10':>8} {'users':>6}"
    lines = [header, "-" * len(header)]
    for name, m in (("offline (in-memory, full ranking)", result["offline"]),
                    (f"served ({result['index_type']}, {result['mode']})", result["served"])):
        lines.append(f"{name:<34} {m['HR@10']:>7.4f} {m['NDCG@10']:>8.4f} {m['users']:>6}")
    d = result["delta"]
    lines.append(f"{'served - offline':<34} {d['HR@10']:>+7.4f} {d['NDCG@10']:>+8.4f}")
    if "served_ranked" in result:
        for name, m in (("offline + ranker", result["offline_ranked"]), ("served + ranker", result["served_ranked"])):
            lines.append(f"{name:<34} {m['HR@10']:>7.4f} {m['NDCG@10']:>8.4f} {m['users']:>6}")
        d = result["delta_ranked"]
        lines.append(f"{'served - offline (ranked)':<34} {d['HR@10']:>+7.4f} {d['NDCG@10']:>+8.4f}")
    if "homepage" in result:
        page = result["homepage"]
        lines += ["", f"{'homepage row':<34} {'hit rate':>8} {'size':>5} {'diversity':>9}"]
        for row_id, r in page["rows"].items():
            ild = "-" if r["intra_list_diversity"] is None else f"{r['intra_list_diversity']:.3f}"
            lines.append(f"{row_id:<34} {r['hit_rate']:>8.4f} {r['size']:>5} {ild:>9}")
        lines.append(f"{'the page (any row)':<34} {page['page_hit_rate']:>8.4f}   coverage {page['coverage']:.3f} "
                     f"of the catalog, {page['users']} users")
    return "\n".join(lines)
