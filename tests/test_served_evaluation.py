"""Online/offline parity, against the real node: `facetrec evaluate --served` publishes the
evaluation vectors behind the *_eval aliases, asks every user's row through the service's code,
and reports served HR@10 / NDCG@10 beside the in-memory full ranking of the same vectors."""

from __future__ import annotations

import json

import pytest

from facetrec.catalog.rows import RowCatalog
from ingest.served_evaluation import eval_settings, served_metrics


def test_served_metrics_rank_the_held_out_item_within_the_top_k():
    ranked = [["a", "b", "c"], ["x", "y"], [], ["q", "t"]]
    m = served_metrics(ranked, ["a", "y", "z", "t"], k=10)
    assert m["users"] == 4
    assert m["HR@10"] == pytest.approx(3 / 4)
    assert m["NDCG@10"] == pytest.approx((1.0 + 1 / 1.5849625007211562 + 1 / 1.5849625007211562) / 4)
    assert served_metrics([["a", "b"]], ["b"], k=1)["HR@1"] == 0.0   # beyond k does not count
    with pytest.raises(ValueError):
        served_metrics([["a"]], ["a", "b"])


@pytest.mark.slow
def test_served_evaluation_matches_offline_and_never_moves_the_live_aliases(es, es_settings, unique, spark, tmp_path,
                                                                           monkeypatch, capsys):
    from facetrec_cli import main
    from ingest import pipeline
    from ingest.embedding.evaluate import evaluate, model_scorer
    from ingest.indexing.generations import Generations

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="flat", retrieval_mode="knn", vector_dims=16)
    work = tmp_path / "run"
    pipeline.step_prepare_data("synthetic", work, n_items=300, n_users=150, history=20, seed=5)
    pipeline.step_etl(work)
    pipeline.step_train(work, {"dim": 16, "hidden": 32, "max_len": 20, "layers": 1},
                        {"epochs": 3, "patience": 3, "seed": 3}, progress=False)
    ranker = pipeline.step_rank(work, log=lambda *_: None)
    pipeline.step_embed(work, progress=False)
    live = pipeline.step_publish(work, settings, pipeline.DATASET_ROWS["synthetic"], progress=False)
    gens = Generations(es, settings)
    before = (gens.live_index("item"), gens.live_index("user"))
    assert before[0] and live["status"] == "swapped"

    for key, value in {"ES_URL": settings.es_url, "FACETREC_ITEM_ALIAS": settings.item_alias,
                       "FACETREC_USER_ALIAS": settings.user_alias, "FACETREC_INDEX_TYPE": "flat",
                       "FACETREC_VECTOR_DIMS": "16"}.items():
        monkeypatch.setenv(key, value)
    assert main(["evaluate", "--served", "--work-dir", str(work)]) == 0
    printed = capsys.readouterr().out
    assert "served (flat, knn)" in printed and "served - offline" in printed and "served + ranker" in printed
    result = json.loads((work / "eval_served.json").read_text())

    # The live pair is exactly where it was; the evaluation pair is a generation of its own aliases.
    assert (gens.live_index("item"), gens.live_index("user")) == before
    evaluation = Generations(es, eval_settings(settings))
    assert evaluation.live_index("item") not in before and evaluation.live_index("user") is not None
    assert es.count(index=eval_settings(settings).user_alias)["count"] == 150

    # Offline numbers are those of the evaluation table; flat (exact) serving loses nothing.
    model, _, data = pipeline._load_model(work)
    offline = evaluate(model_scorer(model, data), data, "test")
    assert result["offline"]["HR@10"] == pytest.approx(offline["HR@10"], abs=1e-9)
    assert result["offline"]["NDCG@10"] == pytest.approx(offline["NDCG@10"], abs=1e-6)
    assert result["served"]["users"] == 150 and offline["HR@10"] > 0
    assert abs(result["delta"]["HR@10"]) <= 1 / 150 + 1e-9, result   # at most one near-tie apart
    assert abs(result["delta"]["NDCG@10"]) <= 1 / 150 + 1e-9, result
    # The ranked row, served through the service's ranking code, against the same ranker offline.
    assert result["ranker"] == ranker["version"] and result["served_ranked"]["users"] == 150
    assert abs(result["delta_ranked"]["HR@10"]) <= 1 / 150 + 1e-9, result
    assert abs(result["delta_ranked"]["NDCG@10"]) <= 1 / 150 + 1e-9, result
    # The publish registered the ranker beside its model's encoder.
    from facetrec.model import ranker as ranking
    from facetrec.model.user_encoder import model_dir

    model_version = json.loads((work / "ranker" / "ranker.json").read_text())["model_version"]
    assert all((model_dir(settings.models_root, model_version) / name).is_file() for name in ranking.RANKER_FILES)
    # Every homepage row of the run's row config (the synthetic one, beside its schema), as served: a
    # row's hit rate is how often the held-out item is in it, the page's how often it is in any row.
    page = result["homepage"]
    catalog_rows = {row.id for row in RowCatalog.load(pipeline.DATASET_ROWS["synthetic"]).homepage_rows()}
    assert set(page["rows"]) == catalog_rows and page["users"] == 150
    assert max(r["hit_rate"] for r in page["rows"].values()) <= page["page_hit_rate"] <= \
        sum(r["hit_rate"] for r in page["rows"].values()) + 1e-9
    assert page["page_hit_rate"] > 0 and 0 < page["coverage"] <= 1
    assert all(0 < r["intra_list_diversity"] <= 2 for r in page["rows"].values() if r["intra_list_diversity"])
    assert "homepage row" in printed and "the page (any row)" in printed
