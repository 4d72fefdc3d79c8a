"""Training and embedding throughput on this machine's CPU.

    python bench/train_bench.py --epochs 3            # MovieLens-100k + a 1M-interaction synthetic set
    python bench/train_bench.py --embed-items 1000000 # item tower throughput for 1M items

Training: samples/s (predicted positions per second) and seconds per epoch with the default
model; embedding: items/s of the item tower in batches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np
import torch

from ingest.embedding.datasets import bundled_schema, write_dataset
from ingest.embedding.etl import run_etl
from ingest.embedding.features import TrainingData, load_training_data
from ingest.embedding.model import ModelConfig
from ingest.embedding.spark import make_spark_session
from ingest.embedding.train import TrainConfig, build_model, train


def etl_data(spark, name: str, work: Path, **kwargs) -> TrainingData:
    files = write_dataset(name, work / "raw", **kwargs)
    run_etl(spark, bundled_schema(name), files["events"], files["catalog"], work / "etl", users_path=files["users"])
    return load_training_data(work / "etl")


def time_training(data: TrainingData, epochs: int) -> dict:
    summary = train(data, ModelConfig(), TrainConfig(epochs=epochs, patience=epochs, eval_users=500), progress=False,
                    log=lambda *_: None)
    events = sum(len(s) for s in data.train_seqs)
    return {"train_events": events, "samples_per_s": summary["samples_per_s"],
            "s_per_epoch": summary["seconds"] / summary["epochs_run"]}


def time_item_embedding(n_items: int) -> float:
    from ingest.embedding.embed import item_matrix

    rng = np.random.default_rng(0)
    data = TrainingData(item_ids=[""] + [f"i{i}" for i in range(n_items)],
                        item_facets={"categories": rng.integers(0, 13, (n_items + 1, 2))},
                        item_titles=rng.integers(0, 4097, (n_items + 1, 8)), train_counts=np.ones(n_items + 1),
                        user_ids=[], user_features=np.zeros((0, 0), np.int64), user_feature_names=[],
                        user_feature_sizes=[], facet_sizes={"categories": 12}, train_seqs=[],
                        valid_items=np.zeros(0, np.int64), test_items=np.zeros(0, np.int64), histories=[],
                        data_version="bench", title_buckets=4096)
    model = build_model(data, ModelConfig())
    started = time.perf_counter()
    item_matrix(model, n_items)
    return n_items / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--embed-items", type=int, default=1_000_000)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_training:
        spark = make_spark_session("facetrec-bench")
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(("movielens-100k", time_training(etl_data(spark, "movielens-100k", Path(tmp) / "ml"),
                                                         args.epochs)))
            rows.append(("synthetic 1M events",
                         time_training(etl_data(spark, "synthetic", Path(tmp) / "syn", n_items=20_000, n_users=20_000,
                                                history=50), args.epochs)))
        spark.stop()
    per_s = time_item_embedding(args.embed_items)
    print(f"\ncommand: python bench/train_bench.py {' '.join(sys.argv[1:])}")
    print(f"device: CPU, {torch.get_num_threads()} torch threads")
    print(f"{'data set':<22} {'train events':>12} {'samples/s':>10} {'s/epoch':>8}")
    for name, r in rows:
        print(f"{name:<22} {r['train_events']:>12,} {r['samples_per_s']:>10,.0f} {r['s_per_epoch']:>8.1f}")
    print(f"item tower embedding: {per_s:,.0f} items/s ({args.embed_items:,} items in {args.embed_items / per_s:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
