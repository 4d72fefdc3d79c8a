"""Diverse rows on MovieLens-100k: accuracy and diversity before/after each policy.

    python bench/diversity_study.py [--work artifacts/demo] [--out docs/diversity_study.md]

Takes the trained model of a pipeline work directory (``facetrec pipeline run`` / the demo), ranks
every item for each user on the test split (time-ordered leave-last-out, seen items excluded, as
``ingest/embedding/evaluate.py``), keeps the top 10 x candidates_factor and applies each policy with
``facetrec.serving.diversity.apply`` (the service's code; MMR by item-vector cosine). Reports HR@10,
NDCG@10, intra-list diversity (mean pairwise 1 - cosine of the item vectors) and genres per list,
with each policy's ratio to the plain top 10.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facetrec.catalog.diversity_policy import DiversityPolicy
from facetrec.serving.diversity import apply, category_coverage, intra_list_diversity  # noqa: E402

POLICIES = {
    "none": None,
    "max_per_category 3": DiversityPolicy(max_per_category=3),
    "max_per_category 2": DiversityPolicy(max_per_category=2),
    "mmr 0.9": DiversityPolicy(mmr_lambda=0.9),
    "mmr 0.7": DiversityPolicy(mmr_lambda=0.7),
    "mmr 0.5": DiversityPolicy(mmr_lambda=0.5),
    "mmr 0.7 + max 2": DiversityPolicy(max_per_category=2, mmr_lambda=0.7),
}
SIZE = 10


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=str(REPO / "artifacts" / "demo"))
    parser.add_argument("--out", default=str(REPO / "docs" / "diversity_study.md"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ingest.embedding.embed import item_matrix
    from ingest.embedding.evaluate import model_scorer, split_inputs
    from ingest.pipeline import _load_model

    started = time.perf_counter()
    model, meta, data = _load_model(args.work)
    seqs, targets = split_inputs(data, "test")
    scores = model_scorer(model, data)(seqs, np.arange(len(seqs)))
    vectors = item_matrix(model, data.n_items)
    genres = data.item_facets["categories"]
    genre_of = [[str(g) for g in row if g] for row in genres]

    totals = {name: {"HR@10": 0.0, "NDCG@10": 0.0, "ILD": 0.0, "genres": 0.0} for name in POLICIES}
    for u, (seq, target) in enumerate(zip(seqs, targets)):
        row = scores[u].astype(np.float64)
        row[0] = -np.inf
        row[np.asarray(seq, dtype=np.int64)] = -np.inf
        top = np.argsort(-row, kind="stable")[:SIZE * 3]
        candidates = [{"id": str(i), "score": float(row[i]), "categories": genre_of[i]} for i in top]
        item_vectors = {str(i): vectors[i].tolist() for i in top}
        for name, policy in POLICIES.items():
            chosen = candidates[:SIZE] if policy is None else apply(policy, candidates, SIZE, item_vectors, category_field="categories")[0]
            ids = [int(c["id"]) for c in chosen]
            t = totals[name]
            if int(target) in ids:
                t["HR@10"] += 1
                t["NDCG@10"] += 1 / math.log2(ids.index(int(target)) + 2)
            t["ILD"] += intra_list_diversity([vectors[i] for i in ids])
            t["genres"] += category_coverage(chosen, "categories")
    users = len(seqs)
    results = {name: {k: float(v) / users for k, v in t.items()} for name, t in totals.items()}

    base = results["none"]
    lines = [f"Command: `python bench/diversity_study.py --work {args.work}`  ",
             f"Data: MovieLens-100k (data version {data.data_version}), model {meta['model_version']}, test split, "
             f"{users} users; candidates = the model's top {SIZE * 3} (seen excluded), policies from "
             f"`facetrec.serving.diversity` (the service's code). {time.perf_counter() - started:.0f}s.", "",
             "| policy | HR@10 | NDCG@10 | ILD | genres/list | HR ratio | ILD ratio | genres ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['ILD']:.3f} | {r['genres']:.2f} | "
                     f"{r['HR@10'] / base['HR@10']:.2f} | {r['ILD'] / base['ILD']:.2f} | "
                     f"{r['genres'] / base['genres']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.write_text("# Diverse rows: accuracy vs diversity (MovieLens-100k)\n\n" + text)
    out.with_suffix(".json").write_text(json.dumps({"model_version": meta["model_version"],
                                                    "data_version": data.data_version, "users": users,
                                                    "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
