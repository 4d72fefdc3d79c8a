"""Cold-start quality: how well the exported item encoder's content-only vector (a new item's, id 0)
places items the towers never saw, and what training with id dropout costs the warm items.

    python bench/cold_start.py                                  # both data sets, dropouts 0 0.1 0.2, seeds 0 1 2
    python bench/cold_start.py --datasets movielens-100k --seeds 0 --dropouts 0 0.2 --out /tmp/cold

Protocol, per data set (MovieLens-100k and the synthetic catalog, each through the real ETL):
  * a seeded random --cold-share of the items is "cold": it is taken out of the catalog the towers
    train on (re-indexed without them: no id, no interaction, no training popularity, never a
    negative of the full softmax), and out of every training sequence;
  * training is the project's own (``train``: default configs but id_dropout, early stopping on
    validation HR@10; a validation target that is cold counts as a miss for every epoch alike);
  * test events (time-ordered leave-last-out) are scored under full ranking over ALL items: warm items
    by their trained vectors, cold items by the cold-start path as served (``export_item_encoder`` ->
    ``ExportedItemEncoder.vectors`` on the item's title and facets, id index 0); the user tower reads
    the user's history without the cold items (a new item is not in the user encoder's table); seen
    items, cold ones included, are excluded from the candidates (``evaluate``);
  * HR@10 / NDCG@10 (and Recall@50) are reported separately over the test events whose target is cold (the users who
    later consumed a new item) and those whose target is warm; MostPop scores cold items 0 (they have
    no training popularity); the reference is the same model trained on the whole catalog (nothing
    held out) on the same two sets of test events.
The cold items are one fixed draw (--cold-seed) for every run, so the runs compare paired.
Writes --out .md and .json (default docs/cold_start.*).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np

REPO = Path(__file__).resolve().parents[1]
METRICS = ("HR@10", "NDCG@10", "Recall@50")
DATASETS = {"movielens-100k": {}, "synthetic": {"n_items": 2000, "n_users": 1000, "history": 30, "seed": 0}}


def cold_mask(n_items: int, share: float, seed: int) -> np.ndarray:
    """(N+1,) True for the held-out items: a seeded random ``share`` of 1..N."""
    picks = np.random.default_rng(seed).choice(np.arange(1, n_items + 1), round(share * n_items), replace=False)
    mask = np.zeros(n_items + 1, dtype=bool)
    mask[picks] = True
    return mask


def warm_catalog(data, cold: np.ndarray):
    """The training data of a catalog without the cold items (re-indexed 1..N_warm) and the map from
    the full catalog's indices to it (0 for the cold items)."""
    keep = np.flatnonzero(~cold)                     # index 0 (padding) stays row 0
    old_to_new = np.zeros(len(cold), dtype=np.int64)
    old_to_new[keep] = np.arange(len(keep))

    def without_cold(seq):
        return old_to_new[seq[~cold[seq]]]

    warm = dataclasses.replace(
        data, item_ids=[data.item_ids[i] for i in keep], item_facets={f: m[keep] for f, m in data.item_facets.items()},
        item_titles=data.item_titles[keep], train_counts=data.train_counts[keep],
        train_seqs=[without_cold(s) for s in data.train_seqs], histories=[without_cold(s) for s in data.histories],
        valid_items=old_to_new[data.valid_items], test_items=old_to_new[data.test_items])
    return warm, old_to_new


def cold_vectors(model, warm, data, etl_dir: str, cold: np.ndarray) -> tuple[np.ndarray, float]:
    """The cold items' vectors through the served path (the exported item encoder on their title and
    facets as items.parquet holds them), and their largest difference from ``item_tower.encode`` with id 0."""
    import pandas as pd
    import torch

    from facetrec.model.item_encoder import ExportedItemEncoder
    from ingest.embedding.embed import export_item_encoder

    idx = np.flatnonzero(cold)
    rows = pd.read_parquet(Path(etl_dir) / "items.parquet").sort_values("item_idx").to_dict("records")
    vocab = json.loads((Path(etl_dir) / "vocab.json").read_text())
    with tempfile.TemporaryDirectory(prefix="facetrec-cold-") as tmp:
        export_item_encoder(model, warm, vocab, Path(tmp))
        encoder = ExportedItemEncoder(tmp)
        assert not any(encoder.knows(data.item_ids[i]) for i in idx)
        served = encoder.vectors([(data.item_ids[i], rows[i - 1]) for i in idx])
    tower = model.item_tower.eval()
    with torch.no_grad():
        direct = tower.encode(torch.zeros(len(idx), dtype=torch.int64),
                              [torch.from_numpy(data.item_facets[f][idx]) for f in tower.facet_names],
                              torch.from_numpy(data.item_titles[idx])).numpy()
    return served, float(np.abs(served - direct).max())


def cold_start_scorer(model, warm, data, old_to_new: np.ndarray, cold: np.ndarray, cold_vecs: np.ndarray):
    """Scores over the full catalog: warm items' trained vectors, cold items' content-only vectors;
    user vectors from the histories without the cold items."""
    from ingest.embedding.embed import item_matrix, user_vectors

    items = item_matrix(model, warm.n_items)[old_to_new]
    items[cold] = cold_vecs

    def score(seqs, rows):
        inputs = [old_to_new[s[~cold[s]]] for s in seqs]
        return user_vectors(model, inputs, data.user_features[rows]) @ items.T
    return score


def subsets(data, cold: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (split, user rows): test events by their target's kind; the validation events with a
    cold target (never used for a choice: a cold validation target is a miss for every epoch)."""
    return {"test_cold": ("test", np.flatnonzero(cold[data.test_items])),
            "test_warm": ("test", np.flatnonzero(~cold[data.test_items])),
            "test_all": ("test", np.arange(len(data.test_items))),
            "valid_cold": ("valid", np.flatnonzero(cold[data.valid_items]))}


def measure(scorer, data, cold: np.ndarray) -> dict:
    from ingest.embedding.evaluate import evaluate

    out = {}
    for name, (split, rows) in subsets(data, cold).items():
        m = evaluate(scorer, data, split, users=rows)
        out[name] = {**{k: m[k] for k in METRICS}, "events": m["users"]}
    return out


def run_one(dataset: str, etl_dir: str, held_out: bool, dropout: float, seed: int, args: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", str(args["threads"]))
    import torch

    from ingest.embedding.evaluate import model_scorer
    from ingest.embedding.features import load_training_data
    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train

    torch.set_num_threads(args["threads"])
    data = load_training_data(etl_dir)
    cold = cold_mask(data.n_items, args["cold_share"], args["cold_seed"])
    started = time.perf_counter()
    out = {"dataset": dataset, "held_out": held_out, "id_dropout": dropout, "seed": seed}
    cfg = TrainConfig(seed=seed, threads=args["threads"])
    if held_out:
        warm, old_to_new = warm_catalog(data, cold)
        summary = train(warm, ModelConfig(id_dropout=dropout), cfg, progress=False, log=lambda *_: None)
        vecs, out["served_vs_encode_max_abs"] = cold_vectors(summary["model"], warm, data, etl_dir, cold)
        scorer = cold_start_scorer(summary["model"], warm, data, old_to_new, cold, vecs)
    else:   # the reference: the whole catalog trained on, scored as the model always is
        summary = train(data, ModelConfig(id_dropout=dropout), cfg, progress=False, log=lambda *_: None)
        scorer = model_scorer(summary["model"], data)
    out.update(best_epoch=summary["best_epoch"], **measure(scorer, data, cold))
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def baselines(etl_dir: str, cold_share: float, cold_seed: int) -> dict:
    from ingest.embedding.evaluate import most_popular
    from ingest.embedding.features import load_training_data

    data = load_training_data(etl_dir)
    cold = cold_mask(data.n_items, cold_share, cold_seed)
    new_items = dataclasses.replace(data, train_counts=np.where(cold, 0.0, data.train_counts))
    return {"n_items": data.n_items, "cold_items": int(cold.sum()), "users": len(data.user_ids),
            "data_version": data.data_version,
            "MostPop": measure(most_popular(new_items), data, cold),
            "MostPop (reference: cold items' real counts)": measure(most_popular(data), data, cold)}


def _cell(runs: list[dict], subset: str, metric: str) -> str:
    values = [r[subset][metric] for r in runs]
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _paired(runs: list[dict], held_out: bool, dropout: float, subset: str) -> str:
    """HR@10 of ``dropout`` minus that of id_dropout 0, seed by seed (same data, cold items, seed)."""
    by_seed = {(r["id_dropout"], r["seed"]): r[subset]["HR@10"] for r in runs if r["held_out"] == held_out}
    diffs = [by_seed[dropout, s] - by_seed[0.0, s] for (d, s) in by_seed if d == dropout and (0.0, s) in by_seed]
    if not diffs:
        return "-"
    spread = f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else ""
    return f"{statistics.mean(diffs):+.4f}{spread} (per seed: {', '.join(f'{d:+.4f}' for d in diffs)})"


def dataset_table(name: str, base: dict, runs: list[dict]) -> list[str]:
    n = {k: v["events"] for k, v in base["MostPop"].items()}
    lines = [f"### {name}: {base['n_items']:,} items, {base['cold_items']} of them cold; {base['users']:,} users "
             f"(data version {base['data_version']})", "",
             "| model | test, cold target: HR@10 | NDCG@10 | Recall@50 | test, warm target: HR@10 | NDCG@10 | "
             "valid, cold target: HR@10 | best epoch |", "|---|---|---|---|---|---|---|---|",
             f"| (events) | {n['test_cold']} | | | {n['test_warm']} | | {n['valid_cold']} | |"]
    for label, m in ((k, v) for k, v in base.items() if k.startswith("MostPop")):
        lines.append(f"| {label} | {m['test_cold']['HR@10']:.4f} | {m['test_cold']['NDCG@10']:.4f} | "
                     f"{m['test_cold']['Recall@50']:.4f} | "
                     f"{m['test_warm']['HR@10']:.4f} | {m['test_warm']['NDCG@10']:.4f} | "
                     f"{m['valid_cold']['HR@10']:.4f} | - |")
    for held_out in (True, False):
        for dropout in sorted({r["id_dropout"] for r in runs if r["held_out"] == held_out}):
            mine = [r for r in runs if r["held_out"] == held_out and r["id_dropout"] == dropout]
            label = (f"two-tower, id_dropout {dropout:g}, cold held out ({len(mine)} seeds)" if held_out else
                     f"reference: id_dropout {dropout:g}, nothing held out ({len(mine)} seeds)")
            lines.append(f"| {label} | {_cell(mine, 'test_cold', 'HR@10')} | {_cell(mine, 'test_cold', 'NDCG@10')} | "
                         f"{_cell(mine, 'test_cold', 'Recall@50')} | "
                         f"{_cell(mine, 'test_warm', 'HR@10')} | {_cell(mine, 'test_warm', 'NDCG@10')} | "
                         f"{_cell(mine, 'valid_cold', 'HR@10')} | {'/'.join(str(r['best_epoch']) for r in mine)} |")
    lines.append("")
    for held_out, subset, what in ((True, "test_warm", "warm-target test HR@10, cold held out"),
                                   (False, "test_all", "all test events HR@10, nothing held out")):
        for dropout in sorted({r["id_dropout"] for r in runs if r["held_out"] == held_out} - {0.0}):
            lines.append(f"- id_dropout {dropout:g} minus 0, {what}: {_paired(runs, held_out, dropout, subset)}")
    warm_hr = [r["test_warm"]["HR@10"] for r in runs if r["held_out"]]
    if warm_hr:
        p = statistics.mean(warm_hr)
        lines.append(f"- for scale: the binomial standard error of a warm HR@10 near {p:.3f} over {n['test_warm']} "
                     f"events is {(p * (1 - p) / n['test_warm']) ** 0.5:.4f}; random ranking would put a cold "
                     f"target in the top 10 about {10 / base['n_items']:.4f} of the time")
    checks = [r["served_vs_encode_max_abs"] for r in runs if "served_vs_encode_max_abs" in r]
    if checks:
        lines.append(f"- the served path's cold vectors against `item_tower.encode(id 0)`: max |diff| {max(checks):.2g}")
    return lines + [""]


PROTOCOL = __doc__.split("Protocol, per data set")[1].split("Writes --out")[0]


def report(command: str, args, bases: dict, runs: list[dict], seconds: float) -> str:
    lines = [f"Command: `{command}`  ", f"Run on {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min wall on this "
             f"project's 2-core machine ({args.parallel} run(s) at once, {args.threads} torch thread each).", "",
             "Protocol, per data set" + PROTOCOL.rstrip(),
             f"Cold share {args.cold_share:g}, cold draw seed {args.cold_seed}; training seeds {args.seeds}; "
             "mean ± standard deviation over seeds.", ""]
    for name, base in bases.items():
        lines += dataset_table(name, base, [r for r in runs if r["dataset"] == name])
    return "\n".join(lines)


def etl_output(dataset: str, given: str | None, work: str) -> str:
    if given:
        return given
    from ingest import pipeline

    pipeline.step_prepare_data(dataset, work, **DATASETS[dataset])
    pipeline.step_etl(work)
    return str(pipeline.paths(work)["etl"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--etl-dir", help="reuse an ETL output of MovieLens-100k (default: run the ETL)")
    parser.add_argument("--synthetic-etl-dir", help="reuse an ETL output of the synthetic catalog (2000 items, "
                                                    "1000 users, history 30, seed 0)")
    parser.add_argument("--dropouts", nargs="+", type=float, default=[0.0, 0.1, 0.2],
                        help="id_dropout values trained with the cold items held out (0 must be one of them)")
    parser.add_argument("--reference-dropouts", nargs="*", type=float, default=[0.0, 0.2],
                        help="id_dropout values trained on the whole catalog, as references (none: skip)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cold-share", type=float, default=0.1)
    parser.add_argument("--cold-seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (each with --threads torch threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "docs" / "cold_start"), help="path prefix for .md and .json")
    args = parser.parse_args()
    if 0.0 not in args.dropouts:
        parser.error("--dropouts must include 0 (the comparison every other value is paired with)")
    command = "python bench/cold_start.py " + " ".join(sys.argv[1:])
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.perf_counter()
    given = {"movielens-100k": args.etl_dir, "synthetic": args.synthetic_etl_dir}
    settings = {"threads": args.threads, "cold_share": args.cold_share, "cold_seed": args.cold_seed}
    with tempfile.TemporaryDirectory(prefix="facetrec-cold-start-") as tmp:
        etl = {name: etl_output(name, given[name], f"{tmp}/{name}") for name in args.datasets}
        bases = {name: baselines(etl[name], args.cold_share, args.cold_seed) for name in args.datasets}
        # Seed-major, so that a shortened run still has every variant at its first seed.
        jobs = [(name, held_out, d, s) for s in args.seeds for name in args.datasets
                for held_out, dropouts in ((True, args.dropouts), (False, args.reference_dropouts)) for d in dropouts]
        runs = []
        with cf.ProcessPoolExecutor(max_workers=args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, name, etl[name], held_out, d, s, settings) for name, held_out, d, s in jobs]
            for done, future in enumerate(cf.as_completed(futures), 1):
                r = future.result()
                runs.append(r)
                print(f"[{done}/{len(jobs)}] {r['dataset']} id_dropout {r['id_dropout']:g} "
                      f"{'cold held out' if r['held_out'] else 'nothing held out'} seed {r['seed']}: "
                      f"cold HR@10 {r['test_cold']['HR@10']:.4f}  warm HR@10 {r['test_warm']['HR@10']:.4f}  "
                      f"(epoch {r['best_epoch']}, {r['seconds']:.0f}s; {time.perf_counter() - started:.0f}s so far)",
                      flush=True)
    runs.sort(key=lambda r: (r["dataset"], not r["held_out"], r["id_dropout"], r["seed"]))
    seconds = time.perf_counter() - started
    text = report(command, args, bases, runs, seconds)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "seconds": round(seconds, 1),
                                                    "settings": {**settings, "seeds": args.seeds},
                                                    "protocol": PROTOCOL.strip(), "baselines": bases, "runs": runs},
                                                   indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
