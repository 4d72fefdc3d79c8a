"""Near-real-time user vectors: POST /v1/users/<id>/events against the real node.

The pair is published with a real (small, seeded) user tower exported the way the nightly embed
step exports it; "what the nightly job computes for this history" is the eager tower itself.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from app import create_app
from facetrec_cli import main
from facetrec.rows import RowCatalog
from facetrec.user_encoder import EncoderRegistry
from facetrec.user_events import EventBatch, Event, UserEvents, event_log_index, parse_event_time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "m-events"
NOW = datetime.now(timezone.utc)


def _ts(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


class NightlyModel:
    """A seeded user tower over a frozen item table: the eager computation the nightly job does."""

    def __init__(self, item_vectors: np.ndarray, item_ids: list[str], max_len: int = 50):
        from ingest.embedding.model import ModelConfig, SequenceUserEncoder, UserTower

        torch.manual_seed(7)
        self.max_len = max_len
        self.table = np.vstack([np.zeros((1, item_vectors.shape[1]), np.float32), item_vectors]).astype(np.float32)
        self.index = {item_id: i + 1 for i, item_id in enumerate(item_ids)}
        self.tower = UserTower(ModelConfig(dim=item_vectors.shape[1], max_len=max_len, dropout=0.0), []).eval()
        self.eager = SequenceUserEncoder(self.tower, torch.from_numpy(self.table)).eval()

    def user_vector(self, history: list[str]) -> np.ndarray:
        from facetrec.user_encoder import left_pad

        seq = np.array([self.index[i] for i in history if i in self.index], dtype=np.int64)
        with torch.no_grad():
            return self.eager(torch.from_numpy(left_pad([seq], self.max_len)), torch.zeros((1, 0), dtype=torch.int64))[0].numpy()

    def export(self, out) -> None:
        from ingest.embedding.embed import save_user_encoder

        os.makedirs(out, exist_ok=True)
        save_user_encoder(self.tower, self.table, out, max_len=self.max_len, item_index=self.index,
                          feature_names=[], feature_vocab={}, example_histories=[np.array([1, 2, 3])],
                          example_features=np.zeros((1, 0), dtype=np.int64))


@pytest.fixture(scope="module")
def pair(es, es_settings, tmp_path_factory):
    """One published pair (flat, exact) whose users' vectors come from NightlyModel, with its
    exported encoder registered under a models root."""
    from facetrec import user_encoder
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("events")
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="flat", models_root=root / "models")
    items, users, item_vectors, _ = embedding_records(n_items=800, n_users=40, dims=64, seed=21)
    model = NightlyModel(np.asarray(item_vectors, np.float32), [i["item_id"] for i in items])
    users = [{**u, "user_embed": model.user_vector(u["seen_item_ids"])} for u in users]
    model.export(root / "embeddings")
    user_encoder.register(root / "embeddings", settings.models_root, MODEL)
    catalog = RowCatalog.load(os.path.join(REPO, "app", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version=MODEL, generation="20260101-000001",
                progress=False, sample_users=3)
    yield settings, catalog, items, users, model
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


@pytest.fixture(scope="module")
def client(pair):
    settings, catalog, *_ = pair
    return create_app(settings, catalog).test_client()


def user_doc(es, settings, user_id):
    return es.get(index=settings.user_alias, id=user_id, source_includes=["user_embed", "seen_item_ids",
                                                                           "event_batch_ids", "generation",
                                                                           "item_generation"])


def test_events_recompute_the_vector_like_the_nightly_job_and_the_next_page_shows_it(es, client, pair):
    settings, _, items, users, model = pair
    user = users[0]
    fresh = [i["item_id"] for i in items[700:703]]
    # Sent out of order: the history takes them in event-time order.
    body = {"batch_id": "b-first", "events": [{"item_id": fresh[1], "ts": _ts(20)}, {"item_id": fresh[0], "ts": _ts(30)},
                                             {"item_id": fresh[2], "ts": _ts(10)}]}
    response = client.post(f"/v1/users/{user['user_id']}/events", json=body)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    spec = yaml.safe_load(open(os.path.join(REPO, "app", "openapi.yaml")))
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/EventsApplied", "components": spec["components"]}
                                    ).validate(result)
    assert result["status"] == "applied" and result["items_added"] == 3 and result["model_version"] == MODEL
    assert not result["new_user"] and result["unknown_to_model"] == 0

    src = user_doc(es, settings, user["user_id"])["_source"]
    history = [*user["seen_item_ids"], *fresh]
    assert src["seen_item_ids"] == history
    np.testing.assert_allclose(src["user_embed"], model.user_vector(history), atol=1e-5)
    assert not np.allclose(src["user_embed"], user["user_embed"], atol=1e-3), "the vector did not change"

    page = client.get(f"/v1/users/{user['user_id']}/homepage?rows=for_you").get_json()
    row = page["rows"][0]
    assert row["items"] and not set(fresh) & {i["id"] for i in row["items"]}, "fresh items are seen: excluded"
    vectors = {i["item_id"]: np.asarray(i["item_embed"], np.float64) for i in items}
    for item in row["items"]:
        assert item["score"] == pytest.approx(float(vectors[item["id"]] @ np.asarray(src["user_embed"])), abs=1e-3)


def test_a_resent_batch_changes_nothing(es, client, pair):
    settings, _, items, users, _ = pair
    user = users[1]["user_id"]
    body = {"batch_id": "retry-1", "events": [{"item_id": items[710]["item_id"], "ts": _ts(5)}]}
    assert client.post(f"/v1/users/{user}/events", json=body).get_json()["status"] == "applied"
    before = user_doc(es, settings, user)
    again = client.post(f"/v1/users/{user}/events", json=body)
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
    after = user_doc(es, settings, user)
    assert after["_seq_no"] == before["_seq_no"] and after["_source"] == before["_source"]


def test_a_new_user_gets_a_vector_and_personalized_rows_after_the_first_events(es, client, pair):
    settings, _, items, _, model = pair
    user = f"newcomer-{uuid.uuid4().hex[:6]}"
    assert client.get(f"/v1/users/{user}/homepage?rows=for_you").get_json()["rows"][0]["source"] == "popular"
    chosen = [items[5]["item_id"], items[9]["item_id"], "never-heard-of-it"]
    result = client.post(f"/v1/users/{user}/events",
                         json={"events": [{"item_id": i, "ts": _ts(3 - n)} for n, i in enumerate(chosen)]}).get_json()
    assert result["status"] == "applied" and result["new_user"] and result["unknown_to_model"] == 1
    src = user_doc(es, settings, user)["_source"]
    np.testing.assert_allclose(src["user_embed"], model.user_vector(chosen), atol=1e-5)
    assert src["item_generation"] == "20260101-000001"
    page = client.get(f"/v1/users/{user}/homepage?rows=for_you").get_json()
    assert page["rows"][0]["source"] == "personalized" and page["user_generation"] == "20260101-000001"
    assert not set(chosen) & {i["id"] for i in page["rows"][0]["items"]}


def test_concurrent_batches_of_one_user_never_lose_an_event(es, pair):
    """Eight writers (as eight gunicorn workers would be), five batches each, one user: every event
    lands, and the vector is the encoder's for the final history (optimistic concurrency)."""
    settings, _, items, users, model = pair
    user = users[2]
    writers = [UserEvents(es, settings, EncoderRegistry(settings.models_root)) for _ in range(8)]
    sent: list[str] = []
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for b in range(5):
                item = items[100 + w * 5 + b]["item_id"]
                writers[w].submit(EventBatch(user["user_id"], f"w{w}-b{b}", (Event(item, NOW),)))
                sent.append(item)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    src = user_doc(es, settings, user["user_id"])["_source"]
    assert sorted(src["seen_item_ids"][-40:]) == sorted(sent) and len(sent) == 40
    assert src["seen_item_ids"][:-40] == user["seen_item_ids"]
    np.testing.assert_allclose(src["user_embed"], model.user_vector(src["seen_item_ids"]), atol=1e-5)


def test_batches_logged_around_a_swap_reach_the_new_generation(es, pair, monkeypatch, capsys):
    """Event traffic while a new generation is published (its users from the batch input, without
    these events): every accepted batch is in the new live generation afterwards."""
    from ingest.indexing.reindex import run_reindex

    settings, catalog, items, users, _ = pair
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    writer = UserEvents(es, settings, EncoderRegistry(settings.models_root))
    accepted: dict[str, list[str]] = {}
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            user = users[10 + n % 5]["user_id"]
            item = items[200 + n % 300]["item_id"]
            result = writer.submit(EventBatch(user, f"swap-{n}", (Event(item, datetime.now(timezone.utc)),)))
            if result.status == "applied":
                accepted.setdefault(user, []).append(f"swap-{n}")
            n += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        summary = run_reindex(es, settings, catalog, items=None, users=users, model_version=MODEL,
                              generation="20260101-000002", progress=False, sample_users=3, events_since=since)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert summary["status"] == "swapped" and summary["events_replayed"]["applied"] > 0
    live = es.indices.get_alias(name=settings.user_alias)
    assert list(live) == [f"{settings.user_alias}-20260101-000002"]
    for user, batches in accepted.items():
        remembered = user_doc(es, settings, user)["_source"].get("event_batch_ids", [])
        assert set(batches) <= set(remembered), f"{user}: lost {sorted(set(batches) - set(remembered))}"
    # The operator's command (what to run when a publish could not re-apply): a second replay changes nothing.
    for name, value in {"ES_URL": settings.es_url, "FACETREC_USER_ALIAS": settings.user_alias,
                        "FACETREC_ITEM_ALIAS": settings.item_alias, "FACETREC_MODELS_ROOT": str(settings.models_root)}.items():
        monkeypatch.setenv(name, value)
    assert main(["events", "replay", "--since", since.isoformat()]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["user_index"] == f"{settings.user_alias}-20260101-000002"
    assert again["applied"] == 0 and again["duplicate"] == again["batches"] > 0, "a second replay must change nothing"


def test_without_the_live_models_encoder_the_batch_is_logged_and_the_answer_is_503(es, pair, tmp_path):
    settings, catalog, items, users, _ = pair
    app = create_app(settings.replace(models_root=tmp_path / "empty"), catalog)
    response = app.test_client().post(f"/v1/users/{users[3]['user_id']}/events",
                                      json={"batch_id": "no-encoder", "events": [{"item_id": items[1]["item_id"],
                                                                                  "ts": _ts(1)}]})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "encoder_unavailable"
    logged = es.get(index=event_log_index(settings), id=f"{users[3]['user_id']}/no-encoder")["_source"]
    assert logged["item_ids"] == [items[1]["item_id"]]


@pytest.mark.parametrize("body, field", [
    ({}, "events"),
    ({"events": []}, "events"),
    ({"events": [{"item_id": "i1", "ts": "2026-01-01T00:00:00Z"}] * 101}, "events"),
    ({"events": [{"item_id": 5, "ts": "2026-01-01T00:00:00Z"}]}, "events[0].item_id"),
    ({"events": [{"item_id": "i1"}]}, "events[0]"),
    ({"events": [{"item_id": "i1", "ts": "2026-01-01T00:00:00"}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": "yesterday"}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": "2999-01-01T00:00:00Z"}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": True}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": 1}], "batch_id": "a b"}, "batch_id"),
    ({"events": [{"item_id": "i1", "ts": 1}], "extra": 1}, "extra"),
    ([], "body"),
])
def test_bad_event_bodies_are_400_naming_the_field(client, body, field):
    response = client.post("/v1/users/u1/events", json=body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["field"] == field


def test_event_times_take_a_zone_or_epoch_milliseconds():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert parse_event_time("2026-11-23T11:00:00+01:00", now) == datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
    assert parse_event_time(1_700_000_000_000, now) == datetime.fromtimestamp(1_700_000_000, timezone.utc)
    assert parse_event_time("2026-11-23T12:04:00Z", now)  # within the allowed clock skew
    for bad in ("2026-11-23T12:06:00Z", "2026-11-23", -1, None, "2026-11-23T12:00:00"):
        with pytest.raises(ValueError):
            parse_event_time(bad, now)
