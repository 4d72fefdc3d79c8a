"""Per-row served evaluation of K interest vectors per user: the same data trained with each K, its
ranker, its evaluation pair published and every homepage row measured as the service serves it.

    python bench/interest_rows.py --etl-dir W/etl [--ks 1 2] [--seed 0] [--rows catalogs/synthetic/rows.yaml]

For each K: a copy of the ETL output, ``step_train`` with ``interests=K``, ``step_rank``, then
``step_evaluate_served`` (test split, every user): offline vs served HR@10 of the whole model, and per
row of the row config the share of users whose next item the row shows, with the row's intra-list
diversity, the page's hit rate and its coverage of the catalog. Uses ``ES_URL`` (or the local node)
and aliases ``interest-rows-*``. Prints a Markdown table; ``--json`` keeps every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _checkout  # noqa: F401 - this checkout's packages first (bench/_checkout.py)

from facetrec.settings import CATALOGS_DIR, Settings  # noqa: E402
from ingest import pipeline  # noqa: E402


def run(etl_dir: Path, ks: list[int], seed: int, rows: Path, scratch: Path) -> dict:
    settings = Settings.from_env().replace(item_alias="interest-rows-item_index",
                                           user_alias="interest-rows-user_index", models_root=scratch / "models")
    results = {}
    for k in ks:
        work = scratch / f"k{k}"
        shutil.copytree(etl_dir, work / "etl")
        inputs = etl_dir.parent / "inputs.json"
        if inputs.exists():
            shutil.copy(inputs, work / "inputs.json")
        started = time.time()
        pipeline.step_train(work, {"interests": k}, {"seed": seed}, progress=False)
        pipeline.step_rank(work, log=lambda *_: None)
        result = pipeline.step_evaluate_served(work, settings, "test", 0, progress=False, rows_config=rows)
        results[k] = {"seconds": round(time.time() - started, 1),
                      **{key: result[key] for key in ("offline", "served", "homepage")}}
    return results


def table(results: dict) -> str:
    ks = sorted(results)
    rows = list(results[ks[0]]["homepage"]["rows"])
    lines = ["| row | " + " | ".join(f"K = {k}: hit rate, intra-list diversity" for k in ks) + " |",
             "| --- |" + " ---: |" * len(ks)]
    for row in rows:
        cells = [results[k]["homepage"]["rows"][row] for k in ks]
        lines.append(f"| {row} | " + " | ".join(f"{c['hit_rate']:.4f}, {c['intra_list_diversity']:.3f}"
                                               for c in cells) + " |")
    lines.append("| the page (any row), coverage | " + " | ".join(
        f"{results[k]['homepage']['page_hit_rate']:.4f}, {results[k]['homepage']['coverage']:.3f}" for k in ks) + " |")
    lines.append("| HR@10 offline / as served | " + " | ".join(
        f"{results[k]['offline']['HR@10']:.4f} / {results[k]['served']['HR@10']:.4f}" for k in ks) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etl-dir", type=Path, required=True, help="an ETL output (facetrec etl --work-dir W: W/etl)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=Path, default=CATALOGS_DIR / "synthetic" / "rows.yaml")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interest-rows-") as scratch:
        results = run(args.etl_dir, args.ks, args.seed, args.rows, Path(scratch))
    print("command: python bench/interest_rows.py " + " ".join(sys.argv[1:]))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
