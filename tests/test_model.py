"""The loss, the metrics and the baselines as pure logic; a planted-signal training run end to end;
the exported user encoder against the eager model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from facetrec.catalog.schema import UserColumns
from ingest.embedding.evaluate import evaluate_all, markov, most_popular, ranking_metrics
from ingest.embedding.model import corrected_logits, log_expected_counts, sampled_softmax_loss


def test_logq_correction_subtracts_log_expected_counts_and_masks_accidental_hits():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pos_idx = torch.tensor([5, 7, 5])          # rows 0 and 2 share item 5
    pos_vecs = torch.tensor([[2.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    neg_idx = torch.tensor([7, 9])
    neg_vecs = torch.tensor([[0.0, 3.0], [1.0, -1.0]])
    probs = torch.zeros(10)
    probs[5], probs[7], probs[9] = 0.5, 0.25, 0.25
    pos_log_q, neg_log_q = log_expected_counts(probs, pos_idx, n_positions=3, n_uniform=2, n_items=10)
    assert torch.allclose(pos_log_q, torch.log(torch.tensor([1.5, 0.75, 1.5])))
    assert torch.allclose(neg_log_q, torch.full((2,), math.log(2 / 10)))

    logits = corrected_logits(user, pos_idx, pos_vecs, neg_idx, neg_vecs, pos_log_q, neg_log_q, temperature=0.5)
    assert logits.shape == (3, 5)
    # dot / T - log Q, e.g. row 1 vs its own positive (item 7): 3 / 0.5 - log(0.75)
    assert logits[1, 1].item() == pytest.approx(6.0 - math.log(0.75))
    assert logits[0, 1].item() == pytest.approx(0.0 - math.log(0.75))
    assert logits[1, 3].item() == float("-inf")   # uniform negative 7 is row 1's positive
    assert logits[0, 2].item() == float("-inf") and logits[2, 0].item() == float("-inf")  # same item 5
    assert logits[0, 0].item() == pytest.approx(4.0 - math.log(1.5))  # the diagonal is kept

    # Without the correction the popular in-batch item would look better than it is.
    uncorrected = corrected_logits(user, pos_idx, pos_vecs, neg_idx, neg_vecs, torch.zeros(3), torch.zeros(2), 0.5)
    assert (uncorrected[:, :3] - logits[:, :3])[torch.isfinite(logits[:, :3])].allclose(
        pos_log_q.expand(3, 3)[torch.isfinite(logits[:, :3])])
    loss = sampled_softmax_loss(logits)
    assert torch.isfinite(loss) and loss.item() > 0


def test_full_softmax_is_cross_entropy_over_the_catalog_without_the_padding_item():
    from ingest.embedding.model import full_softmax_loss

    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[50.0, 50.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # row 0: padding, huge on purpose
    targets = torch.tensor([1, 3])
    logits = user @ items[1:].T / 0.5
    expected = torch.nn.functional.cross_entropy(logits, targets - 1)
    assert full_softmax_loss(user, targets, items, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_loss_is_chosen_by_catalog_size():
    from ingest.embedding.train import TrainConfig, loss_kind

    assert loss_kind(TrainConfig(), 1682) == "full"
    assert loss_kind(TrainConfig(), 1_000_000) == "sampled"
    assert loss_kind(TrainConfig(full_softmax_max_items=1000), 1682) == "sampled"
    assert loss_kind(TrainConfig(loss="sampled"), 1682) == "sampled"
    with pytest.raises(ValueError, match="loss must be one of"):
        loss_kind(TrainConfig(loss="bpr"), 10)


def test_set_overrides_parse_booleans_in_any_case():
    from facetrec_cli.pipeline import _overrides, _split

    model, training = _split(_overrides(["item_title=False", "user_features=true", "epochs=3", "loss=full"]))
    assert model == {"item_title": False, "user_features": True} and training == {"epochs": 3, "loss": "full"}


def test_ranking_metrics_exclude_seen_items_and_break_ties_by_index():
    scores = np.array([[0.0, 5.0, 4.0, 4.0, 1.0], [0.0, 1.0, 1.0, 1.0, 9.0]])
    targets = np.array([3, 2])
    seen = [np.array([1]), np.array([4])]
    metrics = ranking_metrics(scores, targets, seen, n_items=4)
    # user 0: item 1 seen -> 2 and 3 tie at 4.0, lower index first -> target 3 has rank 1
    # user 1: item 4 seen -> 1, 2, 3 tie -> target 2 has rank 1
    assert metrics["HR@10"] == 1.0
    assert metrics["NDCG@10"] == pytest.approx(1 / math.log2(3))


def test_markov_baseline_follows_training_transitions(tiny_data):
    scores = markov(tiny_data)([np.array([1, 2])], np.array([0]))
    assert scores[0].argmax() == 3   # 2 -> 3 was seen in training
    pop = most_popular(tiny_data)([np.array([1])], np.array([0]))
    assert pop[0].argmax() == int(np.argmax(tiny_data.train_counts))


@pytest.fixture
def tiny_data():
    from ingest.embedding.features import TrainingData

    seqs = [np.array([1, 2, 3]), np.array([2, 3, 1]), np.array([1, 2, 3, 4])]
    return TrainingData(item_ids=["", "a", "b", "c", "d"], item_facets={}, item_titles=np.zeros((5, 1), np.int64),
                        train_counts=np.array([0, 3, 3, 3, 1.0]), user_ids=["u", "v", "w"],
                        user_features=np.zeros((3, 0), np.int64), user_feature_names=[], user_feature_sizes=[],
                        facet_sizes={}, train_seqs=seqs, valid_items=np.array([4, 4, 1]),
                        test_items=np.array([1, 2, 2]), histories=seqs, data_version="t", title_buckets=16)


@pytest.fixture(scope="module")
def synthetic_run(spark, tmp_path_factory):
    """Synthetic data with a planted preference signal, through the real ETL, trained for seconds."""
    from ingest.embedding.datasets import bundled_schema, write_dataset
    from ingest.embedding.etl import run_etl
    from ingest.embedding.features import load_training_data
    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train

    work = tmp_path_factory.mktemp("synthetic")
    files = write_dataset("synthetic", work / "raw", n_items=300, n_users=600, history=25, seed=4)
    run_etl(spark, bundled_schema("synthetic"), files["events"], files["catalog"], work / "etl",
            users_path=files["users"])
    data = load_training_data(work / "etl")
    summary = train(data, ModelConfig(dim=32, hidden=64, max_len=20, layers=1, dropout=0.1),
                    TrainConfig(epochs=15, patience=4, batch_size=32, lr=5e-3, seed=7), out_dir=work / "model",
                    progress=False,
                    log=lambda *_: None)
    return work, data, summary


def test_model_beats_most_popular_on_planted_signal(synthetic_run):
    _, data, summary = synthetic_run
    results = evaluate_all(summary["model"], data, "test")
    assert results["two-tower"]["HR@10"] > results["MostPop"]["HR@10"] * 1.2, results
    assert results["two-tower"]["coverage@10"] > results["MostPop"]["coverage@10"]


def test_training_is_deterministic(synthetic_run):
    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train

    _, data, summary = synthetic_run
    again = train(data, ModelConfig(dim=32, hidden=64, max_len=20, layers=1, dropout=0.1),
                  TrainConfig(epochs=2, patience=4, batch_size=32, lr=5e-3, seed=7), progress=False, log=lambda *_: None)
    assert again["history"][:2] == summary["history"][:2]


def test_a_rerun_in_a_new_process_gives_identical_weights_and_metrics(synthetic_run, tmp_path):
    """The reproducibility the README states: same seed, same data, same machine -> the same model,
    bit for bit, and the same metrics, across two separate `facetrec train` processes."""
    import subprocess
    import sys

    import torch

    work, _, _ = synthetic_run
    settings = ["dim=16", "hidden=32", "max_len=20", "layers=1", "epochs=2", "patience=2", "seed=11"]
    summaries, states = [], []
    for run in ("first", "second"):
        run_dir = tmp_path / run
        run_dir.mkdir()
        (run_dir / "etl").symlink_to(work / "etl")
        command = [sys.executable, "-m", "facetrec_cli", "train", "--work-dir", str(run_dir)]
        for pair in settings:
            command += ["--set", pair]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        summaries.append(json.loads((run_dir / "model" / "train_summary.json").read_text()))
        states.append(torch.load(run_dir / "model" / "checkpoint.pt", weights_only=False)["state_dict"])
    assert summaries[0]["history"] == summaries[1]["history"]
    assert summaries[0]["model_version"] == summaries[1]["model_version"]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "weights differ between identical runs"


def test_checkpoint_round_trip_and_exported_user_encoder_matches_eager(synthetic_run, tmp_path):
    from ingest.embedding.embed import ExportedUserEncoder, export_embeddings, user_matrix
    from ingest.embedding.train import load_checkpoint

    work, data, summary = synthetic_run
    model, meta = load_checkpoint(work / "model" / "checkpoint.pt", data)
    assert meta["data_version"] == data.data_version and meta["model_version"].startswith("two-tower-")
    out = export_embeddings(model, data, work / "etl", tmp_path, meta["model_version"], progress=False)
    assert out["n_items"] == data.n_items and out["n_users"] == len(data.user_ids)

    eager = user_matrix(model, data)
    encoder = ExportedUserEncoder(tmp_path)
    for row in (0, 5, 17):
        history = [data.item_ids[i] for i in data.histories[row]]
        exported = encoder.user_vector(history, data.user_features[row].tolist())
        np.testing.assert_allclose(exported, eager[row], atol=1e-5)

    import pyarrow.parquet as pq
    users = pq.read_table(out["users"]).to_pydict()
    np.testing.assert_allclose(np.array(users["user_embed"][5]), eager[5], atol=1e-6)
    assert users["seen_item_ids"][5] == [data.item_ids[i] for i in data.histories[5]]


@pytest.fixture(scope="module")
def featured_run(spark, tmp_path_factory):
    """Synthetic data whose users carry a categorical feature (``segment``), through the real ETL,
    trained briefly: the user tower's feature embedding is part of every user vector."""
    import pandas as pd

    from ingest.embedding.datasets import bundled_schema, write_dataset
    from ingest.embedding.etl import run_etl
    from ingest.embedding.features import load_training_data
    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train

    work = tmp_path_factory.mktemp("featured")
    files = write_dataset("synthetic", work / "raw", n_items=200, n_users=300, history=20, seed=8)
    users = pd.read_parquet(files["users"])
    users["segment"] = [f"s{i % 5}" for i in range(len(users))]
    users.loc[users.index[:7], "segment"] = None  # missing values map to "unknown" everywhere
    users.to_parquet(files["users"], index=False)
    schema = dataclasses.replace(bundled_schema("synthetic"), users=UserColumns(features=("segment",)))
    run_etl(spark, schema, files["events"], files["catalog"], work / "etl", users_path=files["users"])
    data = load_training_data(work / "etl")
    assert data.user_feature_names == ["segment"]
    summary = train(data, ModelConfig(dim=16, hidden=32, max_len=20, layers=1, dropout=0.1, user_features=True),
                    TrainConfig(epochs=2, patience=4, batch_size=64, lr=5e-3, seed=3), out_dir=work / "model",
                    progress=False, log=lambda *_: None)
    return work, data, summary


def test_a_checkpoint_from_before_the_ablation_switches_loads_as_the_model_it_was(featured_run, tmp_path):
    """Checkpoints written before item_facets / item_title / user_features existed were trained with
    all three on; they must load as such although user features are now off by default."""
    from ingest.embedding.train import load_checkpoint

    work, data, summary = featured_run
    blob = torch.load(work / "model" / "checkpoint.pt", weights_only=False)
    for field in ("item_facets", "item_title", "user_features"):
        del blob["meta"]["model_config"][field]
    torch.save(blob, tmp_path / "old.pt")
    model, _ = load_checkpoint(tmp_path / "old.pt", data)
    assert model.cfg.user_features and len(model.user_tower.features) == 1
    state = summary["model"].state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_daily_user_refresh_reproduces_nightly_user_vectors_with_user_features(featured_run, tmp_path):
    """The users-only refresh recomputes vectors from the ETL histories AND user features with the
    exported encoder alone; they equal the nightly (eager) ones within 1e-5 and carry the model
    version. Without the features they would not (checked, so this test can fail)."""
    import shutil

    import pyarrow.parquet as pq

    from ingest import dag_tasks
    from ingest.embedding.embed import ExportedUserEncoder, export_embeddings
    from ingest.embedding.train import load_checkpoint
    from ingest.pipeline import paths

    work, data, _ = featured_run
    model, meta = load_checkpoint(work / "model" / "checkpoint.pt", data)
    nightly = tmp_path / "nightly"
    shutil.copytree(work / "etl", paths(nightly)["etl"])
    export_embeddings(model, data, work / "etl", paths(nightly)["embeddings"], meta["model_version"], progress=False)
    dag_tasks.remember_embeddings(str(nightly), str(tmp_path / "models"))

    refresh = tmp_path / "refresh"
    shutil.copytree(work / "etl", paths(refresh)["etl"])
    assert dag_tasks.refresh_user_vectors(str(refresh), str(tmp_path / "models")) == {"users": len(data.user_ids)}

    before = pq.read_table(paths(nightly)["embeddings"] / "users.parquet").to_pydict()
    after = pq.read_table(paths(refresh)["embeddings"] / "users.parquet").to_pydict()
    assert after["user_id"] == before["user_id"] and after["seen_item_ids"] == before["seen_item_ids"]
    assert set(after["model_version"]) == {meta["model_version"]}
    nightly_vectors = np.array(before["user_embed"])
    np.testing.assert_allclose(np.array(after["user_embed"]), nightly_vectors, atol=1e-5)

    encoder = ExportedUserEncoder(tmp_path / "models" / "latest-embeddings")
    histories = [[data.item_ids[i] for i in h] for h in data.histories]
    without = encoder.user_vectors(histories, np.zeros((len(histories), 1), dtype=np.int64))
    assert np.abs(without - nightly_vectors).max() > 1e-3, "the feature must matter for this test to mean anything"


# ---- multi-interest users (ModelConfig.interests) ------------------------------------------------

def test_one_interest_is_the_model_it_was_and_k_interests_with_equal_heads_reduce_to_it(tiny_data):
    """K = 1 adds no parameter (checkpoints and exported encoders of before load as they were) and
    computes the user vector as before; a K = 2 tower whose interest heads are zero has two equal
    interests, each the K = 1 vector, and the max-over-interests losses equal the one-vector losses."""
    import torch

    from ingest.embedding.model import ModelConfig, TwoTower, full_softmax_loss

    def tower(**cfg):
        return TwoTower(ModelConfig(dim=8, hidden=16, max_len=4, layers=1, dropout=0.0, **cfg), tiny_data.n_items, {},
                        16, {}, torch.from_numpy(tiny_data.item_titles), [])

    torch.manual_seed(3)
    one = tower()
    assert not any("interest" in key for key in one.state_dict())
    two = tower(interests=2)
    assert set(two.state_dict()) - set(one.state_dict()) == {"user_tower.interest_heads.weight",
                                                              "user_tower.interest_heads.bias"}
    two.load_state_dict({**one.state_dict(), "user_tower.interest_heads.weight": torch.zeros(16, 8),
                         "user_tower.interest_heads.bias": torch.zeros(16)})
    one.eval(), two.eval()
    seq = torch.tensor([[0, 1, 2, 3], [2, 3, 1, 4]])
    feats = torch.zeros((2, 0), dtype=torch.int64)
    single, pair = one.last_user_vector(seq, feats), two.last_user_vector(seq, feats)
    assert single.shape == (2, 8) and pair.shape == (2, 2, 8)
    torch.testing.assert_close(pair[:, 0], single)
    torch.testing.assert_close(pair[:, 1], single)
    items = one.item_tower(torch.arange(tiny_data.n_items + 1))
    targets = torch.tensor([4, 1])
    torch.testing.assert_close(full_softmax_loss(pair, targets, items, 0.1), full_softmax_loss(single, targets, items, 0.1))


def test_the_current_interest_comes_first_and_the_others_keep_their_order():
    import torch

    from ingest.embedding.model import current_interest_first

    interests = torch.tensor([[[1.0, 0], [0, 1.0], [-1.0, 0]], [[1.0, 0], [0, 1.0], [-1.0, 0]]])
    last = torch.tensor([[0.0, 2.0], [-3.0, 0.1]])
    ordered = current_interest_first(interests, last)
    assert ordered[0].tolist() == [[0, 1.0], [1.0, 0], [-1.0, 0]]
    assert ordered[1].tolist() == [[-1.0, 0], [1.0, 0], [0, 1.0]]
    empty = current_interest_first(interests, torch.zeros(2, 2))   # no last item: the order stays
    assert torch.equal(empty, interests)


@pytest.fixture(scope="module")
def interests_run(synthetic_run, tmp_path_factory):
    """The synthetic data trained briefly with K = 3 interests, exported."""
    from ingest.embedding.embed import export_embeddings
    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train

    work, data, _ = synthetic_run
    summary = train(data, ModelConfig(dim=16, hidden=32, max_len=20, layers=1, dropout=0.1, interests=3),
                    TrainConfig(epochs=3, patience=3, batch_size=32, lr=5e-3, seed=7), progress=False,
                    log=lambda *_: None)
    out_dir = tmp_path_factory.mktemp("interests")
    out = export_embeddings(summary["model"], data, work / "etl", out_dir, "k3-test", progress=False)
    return data, summary["model"], out_dir, out


def test_the_exported_encoder_recomputes_every_interest_as_the_nightly_export_wrote_it(interests_run):
    """What the events path computes (the exported encoder over a history) equals the nightly export's
    K vectors within 1e-5, the current interest first and equal to user_embed."""
    import pyarrow.parquet as pq

    from ingest.embedding.embed import ExportedUserEncoder

    data, _, out_dir, out = interests_run
    users = pq.read_table(out["users"]).to_pydict()
    encoder = ExportedUserEncoder(out_dir)
    assert encoder.interests == 3
    rows = [0, 7, 31]
    histories = [[data.item_ids[i] for i in data.histories[r]] for r in rows]
    recomputed = encoder.user_interests(histories, data.user_features[rows])
    assert recomputed.shape == (3, 3, 16)
    for n, r in enumerate(rows):
        nightly = np.array(users["user_interests"][r])
        np.testing.assert_allclose(recomputed[n], nightly, atol=1e-5)
        np.testing.assert_allclose(np.array(users["user_embed"][r]), nightly[0], atol=1e-6)
    np.testing.assert_allclose(encoder.user_vectors(histories, data.user_features[rows]), recomputed[:, 0], atol=1e-6)
