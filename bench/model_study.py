"""The model study: an ablation of the two-tower on MovieLens-100k, 3 seeds per variant.

    python bench/model_study.py                         # all variants, seeds 0 1 2, 2 parallel runs
    python bench/model_study.py --variants default ids_only --seeds 0 --out /tmp/study

Every run trains with early stopping on VALIDATION HR@10 (the only thing tuned on), then reports
validation and test HR@10 / NDCG@10 of the chosen epoch. The baselines (MostPop, Markov) are
evaluated by the same code. Prints a markdown table of mean ± standard deviation over seeds and
writes it (with every run's numbers) to --out (default docs/model_study.{md,json}), and its picture
(``bench/plots.py``) to docs/model_study.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)

REPO = Path(__file__).resolve().parents[1]

# name -> (what it shows, ModelConfig overrides, TrainConfig overrides)
VARIANTS = {
    "ids_only": ("reference: the same encoder with item ids only (SASRec-style)",
                 {"item_facets": False, "item_title": False}, {}),
    "ids+facets": ("+ item facets (genres)", {"item_title": False}, {}),
    "default": ("the shipped two-tower: ids + facets + title tokens, full softmax, all positions but the "
                "ranker's holdout (each training sequence's last 5)", {}, {}),
    "no_holdout": ("the towers fit every training position (no holdout, so no ranker)", {}, {"ranker_holdout": 0}),
    "holdout_10": ("the ranker's holdout doubled to each training sequence's last 10", {}, {"ranker_holdout": 10}),
    "+user_features": ("+ user features (gender, age, occupation) in the user tower", {"user_features": True}, {}),
    "sampled_softmax": ("sampled softmax + logQ (512 uniform + in-batch negatives) instead of full", {},
                        {"loss": "sampled"}),
    "last_position": ("loss on the last position of each window only", {}, {"positions": "last"}),
    "id_dropout_0.1": ("the shipped towers trained with 10% of item ids hidden (a new item's vector from its "
                       "content: docs/cold_start.md)", {"id_dropout": 0.1}, {}),
    "id_dropout_0.2": ("the same with 20% of item ids hidden", {"id_dropout": 0.2}, {}),
    "interests_2": ("2 interest vectors per user, trained on the best of them (max over interests)",
                    {"interests": 2}, {}),
    "interests_4": ("4 interest vectors per user", {"interests": 4}, {}),
}


def run_one(etl_dir: str, variant: str, seed: int, threads: int) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from ingest.embedding.evaluate import evaluate, model_scorer
    from ingest.embedding.features import load_training_data
    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train

    _, model_o, train_o = VARIANTS[variant]
    data = load_training_data(etl_dir)
    started = time.perf_counter()
    summary = train(data, ModelConfig(**model_o), TrainConfig(seed=seed, threads=threads, **train_o),
                    progress=False, log=lambda *_: None)
    scorer = model_scorer(summary["model"], data)
    valid, test = evaluate(scorer, data, "valid"), evaluate(scorer, data, "test")
    served_out = None
    if summary["model"].cfg.interests > 1:   # an unfiltered row is searched with the current interest only
        current = model_scorer(summary["model"], data, served=True)
        sv, st = evaluate(current, data, "valid"), evaluate(current, data, "test")
        served_out = {"valid": {k: sv[k] for k in ("HR@10", "NDCG@10")}, "test": {k: st[k] for k in ("HR@10", "NDCG@10")}}
    out = {"variant": variant, "seed": seed, "best_epoch": summary["best_epoch"], "loss": summary["loss"],
           "seconds": round(time.perf_counter() - started, 1),
           "valid": {k: valid[k] for k in ("HR@10", "NDCG@10")}, "test": {k: test[k] for k in ("HR@10", "NDCG@10")}}
    if served_out:
        out["current_interest"] = served_out
    # Boosting inside the search (ingest.embedding.hydration): the boost weights chosen on validation.
    from ingest.embedding.hydration import boost_coordinates, choose_weights, hydrated_scorer
    from ingest.embedding.ranker_training import item_tables

    coordinates = boost_coordinates(item_tables(data, etl_dir))
    weights, _ = choose_weights(summary["model"], data, coordinates)
    boosted = hydrated_scorer(summary["model"], data, coordinates, weights)
    hv, ht = evaluate(boosted, data, "valid"), evaluate(boosted, data, "test")
    out["hydrated"] = {"weights": list(weights), "valid": {k: hv[k] for k in ("HR@10", "NDCG@10")},
                       "test": {k: ht[k] for k in ("HR@10", "NDCG@10")}}
    holdout = summary["train_config"]["ranker_holdout"]
    if holdout:   # the same towers + their ranker (ingest.embedding.ranker_training), scored as served
        from facetrec.model.ranker import Ranker
        from ingest.embedding.ranker_training import RankerConfig, ranked_scorer, train_ranker

        with tempfile.TemporaryDirectory(prefix="facetrec-study-ranker-") as tmp:
            ranked = train_ranker(summary["model"], data, etl_dir, tmp, holdout, RankerConfig(seed=seed),
                                  log=lambda *_: None)
            ranker_scorer = ranked_scorer(summary["model"], data, Ranker.load(tmp))
            rv, rt = evaluate(ranker_scorer, data, "valid"), evaluate(ranker_scorer, data, "test")
        out["ranked"] = {"trees": ranked["trees"], "valid": {k: rv[k] for k in ("HR@10", "NDCG@10")},
                         "test": {k: rt[k] for k in ("HR@10", "NDCG@10")}}
        out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def baselines(etl_dir: str) -> dict:
    from ingest.embedding.evaluate import evaluate, markov, most_popular
    from ingest.embedding.features import load_training_data

    data = load_training_data(etl_dir)
    out = {}
    for name, scorer in (("MostPop", most_popular(data)), ("Markov", markov(data))):
        out[name] = {split: {k: v for k, v in evaluate(scorer, data, split).items() if k in ("HR@10", "NDCG@10")}
                     for split in ("valid", "test")}
    return out


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


TIE_BREAK_TEXT = {"hash": "same-second events ordered by a seeded hash of (user, item), the tie-robust protocol",
                  "item_id": "same-second events ordered by item id as a string (before the protocol)",
                  "numeric": "same-second events ordered by item id as a number"}


def table(runs: list[dict], base: dict, seeds: list[int], command: str, data_version: str,
          tie_break: str = "hash", data: str = "MovieLens-100k", items: int = 1682) -> str:
    lines = [f"Command: `{command}`  ", f"Data: {data} through the Spark ETL (data version {data_version}); "
             f"time-ordered leave-last-out, full ranking over all {items:,} items, seen items excluded; "
             f"{TIE_BREAK_TEXT[tie_break]}.  ",
             f"Seeds: {seeds}; mean ± standard deviation over seeds; early stopping and all "
             "choices on validation only.", "",
             "| variant | what it shows | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | best epoch |",
             "|---|---|---|---|---|---|---|"]
    for name, splits in base.items():
        lines.append(f"| {name} | baseline | {splits['valid']['HR@10']:.4f} | {splits['valid']['NDCG@10']:.4f} | "
                     f"{splits['test']['HR@10']:.4f} | {splits['test']['NDCG@10']:.4f} | - |")
    for variant, (what, _, _) in VARIANTS.items():
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        cell = {(s, m): _fmt([r[s][m] for r in mine]) for s in ("valid", "test") for m in ("HR@10", "NDCG@10")}
        epochs = "/".join(str(r["best_epoch"]) for r in mine)
        lines.append(f"| {variant} | {what} | {cell['valid', 'HR@10']} | {cell['valid', 'NDCG@10']} | "
                     f"{cell['test', 'HR@10']} | {cell['test', 'NDCG@10']} | {epochs} |")
        current = [r["current_interest"] for r in mine if "current_interest" in r]
        if current:
            cell = {(s, m): _fmt([r[s][m] for r in current]) for s in ("valid", "test") for m in ("HR@10", "NDCG@10")}
            lines.append(f"| {variant}, current interest | the same towers scored with the interest the user's last "
                         f"item points to (what an unfiltered row is searched with) | {cell['valid', 'HR@10']} | "
                         f"{cell['valid', 'NDCG@10']} | {cell['test', 'HR@10']} | {cell['test', 'NDCG@10']} | {epochs} |")
        hydrated = [r["hydrated"] for r in mine if "hydrated" in r]
        if hydrated:
            cell = {(s, m): _fmt([r[s][m] for r in hydrated]) for s in ("valid", "test") for m in ("HR@10", "NDCG@10")}
            weights = "; ".join(f"{r['weights'][0]:g}/{r['weights'][1]:g}" for r in hydrated)
            lines.append(f"| {variant} + hydrated | the same towers, + popularity / freshness boost weights chosen "
                         f"on validation ({weights}) | {cell['valid', 'HR@10']} | {cell['valid', 'NDCG@10']} | "
                         f"{cell['test', 'HR@10']} | {cell['test', 'NDCG@10']} | {epochs} |")
        ranked = [r["ranked"] for r in mine if "ranked" in r]
        if ranked:
            cell = {(s, m): _fmt([r[s][m] for r in ranked]) for s in ("valid", "test") for m in ("HR@10", "NDCG@10")}
            trees = "/".join(str(r["trees"]) for r in ranked)
            lines.append(f"| {variant} + ranker | the same towers, their top 100 re-sorted by the LambdaRank ranker "
                         f"({trees} trees) | {cell['valid', 'HR@10']} | {cell['valid', 'NDCG@10']} | "
                         f"{cell['test', 'HR@10']} | {cell['test', 'NDCG@10']} | {epochs} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (each with --threads torch threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--etl-dir", help="reuse an ETL output of MovieLens-100k (default: run the ETL)")
    parser.add_argument("--tie-break", choices=list(TIE_BREAK_TEXT), default="hash",
                        help="how the ETL orders same-second events (facetrec.model.ties; the others only to compare)")
    parser.add_argument("--out", default=str(REPO / "docs" / "model_study"), help="path prefix for .md and .json")
    parser.add_argument("--data", default="MovieLens-100k", help="what the ETL output holds (the table's header)")
    parser.add_argument("--render", nargs="+", metavar="JSON", help="train nothing: write the table and picture of "
                                                                    "these studies' runs together (later files win)")
    args = parser.parse_args()
    command = "python bench/model_study.py " + " ".join(sys.argv[1:])
    if args.render:
        return render(args)

    with tempfile.TemporaryDirectory(prefix="facetrec-study-") as tmp:
        etl_dir = args.etl_dir
        if etl_dir is None:
            from ingest import pipeline

            pipeline.step_prepare_data("movielens-100k", tmp)
            pipeline.step_etl(tmp, tie_break=args.tie_break)
            etl_dir = str(pipeline.paths(tmp)["etl"])
        report = json.loads((Path(etl_dir) / "report.json").read_text())
        if report.get("tie_break", "item_id") != args.tie_break:   # ETL outputs before the protocol: item ids
            parser.error(f"--etl-dir {etl_dir} orders ties by {report.get('tie_break', 'item_id')!r}, "
                         f"not --tie-break {args.tie_break!r}")
        base = baselines(etl_dir)
        from ingest.embedding.features import load_training_data

        n_items = load_training_data(etl_dir).n_items
        data_version = report["data_version"]
        jobs = [(v, s) for v in args.variants for s in args.seeds]
        runs = []
        started = time.perf_counter()
        with cf.ProcessPoolExecutor(max_workers=args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, etl_dir, v, s, args.threads): (v, s) for v, s in jobs}
            for done, future in enumerate(cf.as_completed(futures), 1):
                r = future.result()
                runs.append(r)
                print(f"[{done}/{len(jobs)}] {r['variant']} seed {r['seed']}: valid HR@10 {r['valid']['HR@10']:.4f}  "
                      f"test HR@10 {r['test']['HR@10']:.4f} NDCG@10 {r['test']['NDCG@10']:.4f}  "
                      f"(epoch {r['best_epoch']}, {r['seconds']:.0f}s; {time.perf_counter() - started:.0f}s so far)",
                      flush=True)
    runs.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    text = table(runs, base, args.seeds, command, data_version, args.tie_break, args.data, n_items)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "tie_break": args.tie_break, "baselines": base,
                                                    "runs": runs}, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plots import plot_model_study  # bench/plots.py: the study's picture beside its table

    picture = plot_model_study({"command": command, "baselines": base, "runs": runs}, out.with_suffix(".png"),
                               date=f"run on {time.strftime('%Y-%m-%d')}")
    print(f"wrote {picture}")
    return 0


def render(args) -> int:
    """The table and picture of earlier studies' runs, merged (a run of a variant and seed in a later
    file replaces the earlier one); their commands are kept in the header, in order."""
    runs: dict[tuple[str, int], dict] = {}
    commands, base, seeds = [], None, set()
    for path in args.render:
        study = json.loads(Path(path).read_text())
        commands.append(study["command"])
        base = study["baselines"]
        for r in study["runs"]:
            runs[(r["variant"], r["seed"])] = r
            seeds.add(r["seed"])
    merged = sorted(runs.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    report = json.loads((Path(args.etl_dir) / "report.json").read_text()) if args.etl_dir else {}
    from ingest.embedding.features import load_training_data

    n_items = load_training_data(args.etl_dir).n_items if args.etl_dir else 1682
    command = "; then ".join(commands)
    text = table(merged, base, sorted(seeds), command, report.get("data_version", "?"), args.tie_break, args.data,
                 n_items)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "tie_break": args.tie_break, "baselines": base,
                                                    "runs": merged}, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plots import plot_model_study

    plot_model_study({"command": command, "baselines": base, "runs": merged}, out.with_suffix(".png"),
                     date=f"rendered on {time.strftime('%Y-%m-%d')}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
