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

import numpy as np
import pytest
from conftest import EVENTS_MODEL
from openapi_check import assert_matches_schema

from app import create_app
from facetrec.events.apply import MAX_REMEMBERED_BATCHES, UserEvents
from facetrec.events.batch import Event, EventBatch, parse_event_time
from facetrec.events.log import event_log_index
from facetrec.model.user_encoder import EncoderRegistry
from facetrec_cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = datetime.now(timezone.utc)


def _ts(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


@pytest.fixture(scope="module")
def client(events_pair):
    settings, catalog, *_ = events_pair
    return create_app(settings, catalog).test_client()


def user_doc(es, settings, user_id):
    return es.get(index=settings.user_alias, id=user_id, source_includes=["user_embed", "seen_item_ids",
                                                                           "event_batch_ids", "generation",
                                                                           "item_generation"])


def test_events_recompute_the_vector_like_the_nightly_job_and_the_next_page_shows_it(es, client, events_pair):
    settings, _, items, users, model = events_pair
    user = users[0]
    fresh = [i["item_id"] for i in items[700:703]]
    # Sent out of order: the history takes them in event-time order.
    body = {"batch_id": "b-first", "events": [{"item_id": fresh[1], "ts": _ts(20)}, {"item_id": fresh[0], "ts": _ts(30)},
                                             {"item_id": fresh[2], "ts": _ts(10)}]}
    response = client.post(f"/v1/users/{user['user_id']}/events", json=body)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert_matches_schema(result, "EventsApplied")
    assert result["status"] == "applied" and result["items_added"] == 3 and result["model_version"] == EVENTS_MODEL
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


def test_a_resent_batch_changes_nothing(es, client, events_pair):
    settings, _, items, users, _ = events_pair
    user = users[1]["user_id"]
    body = {"batch_id": "retry-1", "events": [{"item_id": items[710]["item_id"], "ts": _ts(5)}]}
    assert client.post(f"/v1/users/{user}/events", json=body).get_json()["status"] == "applied"
    before = user_doc(es, settings, user)
    again = client.post(f"/v1/users/{user}/events", json=body)
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
    after = user_doc(es, settings, user)
    assert after["_seq_no"] == before["_seq_no"] and after["_source"] == before["_source"]


def test_a_new_user_gets_a_vector_and_personalized_rows_after_the_first_events(es, client, events_pair):
    settings, _, items, _, model = events_pair
    user = f"newcomer-{uuid.uuid4().hex[:6]}"
    assert client.get(f"/v1/users/{user}/homepage?rows=for_you").get_json()["rows"][0]["source"] == "popular"
    chosen = [items[5]["item_id"], items[9]["item_id"], "never-heard-of-it"]
    result = client.post(f"/v1/users/{user}/events",
                         json={"events": [{"item_id": i, "ts": _ts(3 - n)} for n, i in enumerate(chosen)]}).get_json()
    assert result["status"] == "applied" and result["new_user"] and result["unknown_items"] == 1   # not in the catalog
    assert result["unknown_to_model"] == 0 and result["items_added"] == 2
    src = user_doc(es, settings, user)["_source"]
    assert src["seen_item_ids"] == chosen[:2]   # an item the catalog lacks is not in the history
    np.testing.assert_allclose(src["user_embed"], model.user_vector(chosen), atol=1e-5)
    assert src["item_generation"] == "20260101-000001"
    page = client.get(f"/v1/users/{user}/homepage?rows=for_you").get_json()
    assert page["rows"][0]["source"] == "personalized" and page["user_generation"] == "20260101-000001"
    assert not set(chosen) & {i["id"] for i in page["rows"][0]["items"]}


def test_concurrent_batches_of_one_user_never_lose_an_event(es, events_pair):
    """Eight writers (as eight gunicorn workers would be), five batches each, one user: every event
    lands, and the vector is the encoder's for the final history (optimistic concurrency)."""
    settings, _, items, users, model = events_pair
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


def test_batches_logged_around_a_swap_reach_the_new_generation(es, events_pair, monkeypatch, capsys):
    """Event traffic while a new generation is published (its users from the batch input, without
    these events): every accepted batch is in the new live generation afterwards."""
    from ingest.indexing.reindex import run_reindex

    settings, catalog, items, users, _ = events_pair
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    writer = UserEvents(es, settings, EncoderRegistry(settings.models_root))
    accepted: dict[str, list[str]] = {}
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            user = users[10 + n % 30]["user_id"]   # many users: each remembers its last MAX_REMEMBERED_BATCHES
            item = items[200 + n % 300]["item_id"]
            result = writer.submit(EventBatch(user, f"swap-{n}", (Event(item, datetime.now(timezone.utc)),)))
            if result.status == "applied":
                accepted.setdefault(user, []).append(f"swap-{n}")
            n += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        summary = run_reindex(es, settings, catalog, items=None, users=users, model_version=EVENTS_MODEL,
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
        # A user document remembers its last MAX_REMEMBERED_BATCHES batch ids (the re-send window);
        # with 30 users that window holds every batch of this run (about 11 per user here).
        expected = set(batches[-MAX_REMEMBERED_BATCHES:])
        assert expected <= set(remembered), f"{user}: lost {sorted(expected - set(remembered))}"
    # The operator's command (what to run when a publish could not re-apply): a second replay changes nothing.
    for name, value in {"ES_URL": settings.es_url, "FACETREC_USER_ALIAS": settings.user_alias,
                        "FACETREC_ITEM_ALIAS": settings.item_alias, "FACETREC_MODELS_ROOT": str(settings.models_root)}.items():
        monkeypatch.setenv(name, value)
    assert main(["events", "replay", "--since", since.isoformat()]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["user_index"] == f"{settings.user_alias}-20260101-000002"
    assert again["applied"] == 0 and again["duplicate"] == again["batches"] > 0, "a second replay must change nothing"


def test_without_the_live_models_encoder_the_batch_is_logged_and_the_answer_is_503(es, events_pair, tmp_path):
    settings, catalog, items, users, _ = events_pair
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
    ({"events": [{"item_id": "i1"}]}, "events[0].ts"),
    ({"events": ["i1"]}, "events[0]"),
    ({"events": [{"item_id": "i1", "ts": "2026-01-01T00:00:00Z", "rating": 5}]}, "events[0].rating"),
    ({"events": [{"item_id": "i1", "ts": "2026-01-01T00:00:00"}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": "yesterday"}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": "2999-01-01T00:00:00Z"}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": True}]}, "events[0].ts"),
    ({"events": [{"item_id": "i1", "ts": 1_700_000_000_000}], "batch_id": "a b"}, "batch_id"),
    ({"events": [{"item_id": "i1", "ts": 1_700_000_000_000}], "extra": 1}, "extra"),
    ({"events": [{"item_id": "i1", "ts": 1_700_000_000}]}, "events[0].ts"),                 # seconds, no unit
    ({"events": [{"item_id": "i1", "ts": 1_700_000_000_000}], "ts_unit": "s"}, "events[0].ts"),  # ms said to be s
    ({"events": [{"item_id": "i1", "ts": 1_700_000_000}], "ts_unit": "minutes"}, "ts_unit"),
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
    for bad in ("2026-11-23T12:06:00Z", "2026-11-23", -1, None, "2026-11-23T12:00:00", float("nan")):
        with pytest.raises(ValueError):
            parse_event_time(bad, now)


def test_epoch_times_take_an_explicit_unit_or_are_refused_when_ambiguous():
    """Before: ``ts: 1700000000`` (epoch seconds, November 2023) was read as milliseconds (January 1970)."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    nov_2023 = datetime.fromtimestamp(1_700_000_000, timezone.utc)
    with pytest.raises(ValueError, match="ambiguous.*1970-01-20"):
        parse_event_time(1_700_000_000, now)
    assert parse_event_time(1_700_000_000, now, unit="s") == nov_2023
    assert parse_event_time(1_700_000_000.5, now, unit="s") == nov_2023 + timedelta(milliseconds=500)
    assert parse_event_time(1_700_000_000_000, now, unit="ms") == nov_2023
    assert parse_event_time(5_000, now, unit="ms") == datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc)  # said so
    assert parse_event_time(100_000_000_000, now) == datetime(1973, 3, 3, 9, 46, 40, tzinfo=timezone.utc)  # the bound
    with pytest.raises(ValueError, match="out of range"):
        parse_event_time(1_700_000_000_000, now, unit="s")   # milliseconds said to be seconds: year 55800
    with pytest.raises(ValueError, match="unit"):
        parse_event_time(1_700_000_000, now, unit="minutes")


def test_an_ambiguous_epoch_is_a_400_that_names_the_unit_and_seconds_with_their_unit_are_applied(es, client,
                                                                                               events_pair):
    settings, _, items, users, _ = events_pair
    user = users[4]["user_id"]
    seconds = int((datetime.now(timezone.utc) - timedelta(minutes=2)).timestamp())
    refused = client.post(f"/v1/users/{user}/events", json={"events": [{"item_id": items[720]["item_id"], "ts": seconds}]})
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["field"] == "events[0].ts" and '"ts_unit": "s"' in error["message"] and "1970" in error["message"]
    body = {"batch_id": "seconds-1", "ts_unit": "s", "events": [{"item_id": items[720]["item_id"], "ts": seconds}]}
    assert client.post(f"/v1/users/{user}/events", json=body).get_json()["status"] == "applied"
    logged = es.get(index=event_log_index(settings), id=f"{user}/seconds-1")["_source"]
    assert logged["event_times"] == [datetime.fromtimestamp(seconds, timezone.utc).isoformat()]


def test_a_reused_batch_id_with_other_events_is_409_and_the_same_batch_again_is_a_harmless_200(es, client,
                                                                                               events_pair):
    settings, _, items, users, _ = events_pair
    user = users[5]["user_id"]
    at = _ts(60)
    first = {"batch_id": "reuse-1", "events": [{"item_id": items[730]["item_id"], "ts": at}]}
    assert client.post(f"/v1/users/{user}/events", json=first).get_json()["status"] == "applied"
    before = user_doc(es, settings, user)
    # The same events, the same instant written in another zone, in another order: a retry.
    same_instant = datetime.fromisoformat(at).astimezone(timezone(timedelta(hours=2))).isoformat()
    retry = client.post(f"/v1/users/{user}/events", json={"batch_id": "reuse-1", "events": [
        {"item_id": items[730]["item_id"], "ts": same_instant}]})
    assert retry.status_code == 200 and retry.get_json()["status"] == "duplicate"
    for other in ([{"item_id": items[731]["item_id"], "ts": at}],                                    # another item
                  [{"item_id": items[730]["item_id"], "ts": _ts(30)}],                               # another time
                  [{"item_id": items[730]["item_id"], "ts": at}, {"item_id": items[731]["item_id"], "ts": at}]):
        response = client.post(f"/v1/users/{user}/events", json={"batch_id": "reuse-1", "events": other})
        assert response.status_code == 409, response.get_json()
        error = response.get_json()["error"]
        assert error["field"] == "batch_id" and error["code"] == "batch_id_reused" and "reuse-1" in error["message"]
        assert_matches_schema(response.get_json(), "Error")
    after = user_doc(es, settings, user)
    assert after["_seq_no"] == before["_seq_no"] and after["_source"] == before["_source"]
    # Batch ids belong to a user: another user may use the same one.
    other_user = users[6]["user_id"]
    assert client.post(f"/v1/users/{other_user}/events", json={"batch_id": "reuse-1", "events": [
        {"item_id": items[731]["item_id"], "ts": at}]}).get_json()["status"] == "applied"
