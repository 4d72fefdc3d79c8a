"""A short training run on real data (MovieLens-100k through the Spark ETL), evaluated under the
full-ranking leave-last-out protocol: the model must beat MostPop. (The full run and its numbers
are in the README: `facetrec pipeline run --dataset movielens-100k`.)"""

from __future__ import annotations

import pytest

from ingest.embedding.datasets import write_dataset
from ingest.embedding.etl import run_etl
from ingest.embedding.evaluate import comparison_table, evaluate_all
from ingest.embedding.features import load_training_data
from ingest.embedding.model import ModelConfig
from ingest.embedding.train import TrainConfig, train


@pytest.mark.slow
def test_short_movielens_training_beats_most_popular(spark, tmp_path):
    files = write_dataset("movielens-100k", tmp_path / "raw")
    report = run_etl(spark, files["events"], files["catalog"], tmp_path / "etl", users_path=files["users"])
    assert report["events_kept"] == 100_000 and report["users_kept"] == 943 and report["items"] == 1682
    data = load_training_data(tmp_path / "etl")
    assert data.facet_sizes == {"categories": 18}
    assert sorted(data.user_feature_names) == ["age_bucket", "gender", "occupation"]

    summary = train(data, ModelConfig(max_len=100), TrainConfig(epochs=6, patience=6, seed=42), progress=False,
                    log=lambda *_: None)
    results = evaluate_all(summary["model"], data, "test")
    print(comparison_table(results))
    assert results["MostPop"]["HR@10"] == pytest.approx(0.0657, abs=0.002)   # the protocol's reference point
    assert 0.14 < results["Markov"]["HR@10"] < 0.17
    assert results["two-tower"]["HR@10"] > results["MostPop"]["HR@10"] * 1.3, results
