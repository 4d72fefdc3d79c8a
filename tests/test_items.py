"""The catalog changes during the day (facetrec.items), on the real node with a really trained model
(its exported item encoder): a takedown leaves every row of every arm within the bound and stays
out through a rollback until it is restored; a new item is served with the vector the pair's own
encoder gives it; a change applied twice changes nothing; a process killed between the log write
and the apply loses no change; a takedown during a publish SIGKILLed at its steps is absent from the
pair that goes live; an event naming an item the catalog lacks is left out of the history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from openapi_check import assert_valid_exchange

from app import create_app
from facetrec.catalog.meta import read_meta
from facetrec.catalog.rows import RowCatalog
from facetrec.es import alias_index
from facetrec.items.apply import ItemChanges
from facetrec.items.changes import ItemChange
from facetrec.items.log import change_log_index
from facetrec.model.item_encoder import ExportedItemEncoder
from facetrec.settings import CATALOGS_DIR
from ingest import pipeline
from ingest.experiments import lifecycle as experiments
from ingest.indexing.generations import Generations

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = CATALOGS_DIR / "synthetic" / "rows.yaml"
MODEL = {"dim": 16, "hidden": 32, "layers": 1, "max_len": 20, "dropout": 0.1, "id_dropout": 0.2}
ADMIN = "a" * 24
TAKEDOWN_BOUND_S = 1.0


@pytest.fixture(scope="module")
def shop(es, es_settings, tmp_path_factory):
    """A synthetic catalog trained for seconds (with id dropout), published twice: control's pair and
    an experiment arm's, behind module-unique aliases (graph indices, partitions per format)."""
    root = tmp_path_factory.mktemp("shop")
    prefix = f"shop-{uuid.uuid4().hex[:8]}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="hnsw", partition_min_docs=20, vector_dims=MODEL["dim"],
                                   models_root=root / "models", rows_config=ROWS, experiment_refresh_s=1.0,
                                   admin_tokens=ADMIN, takedown_poll_s=0.2, es_request_timeout_s=5.0)
    work = root / "run"
    pipeline.step_prepare_data("synthetic", work, n_items=400, n_users=160, history=20, seed=3)
    pipeline.step_etl(work)
    pipeline.step_train(work, MODEL, {"epochs": 2, "patience": 2, "seed": 1}, progress=False)
    pipeline.step_embed(work, progress=False)
    pipeline.step_publish(work, settings, ROWS, generation="20260401-000001", progress=False)
    experiments.start(es, settings, experiment_id="shop-exp", arm="candidate", weight=0.5,
                      publish=lambda arm: pipeline.step_publish(work, settings, ROWS, generation="20260401-000002",
                                                                arm=arm, progress=False))
    yield settings, work
    es.indices.delete(index=f"{prefix}*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


@pytest.fixture(scope="module")
def client(shop):
    settings, _ = shop
    return create_app(settings).test_client()


AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _items_on_pages(client, users, arm: str, extra: str = "") -> set[str]:
    seen = set()
    for user in users:
        page = client.get(f"/v1/users/{user}/homepage?arm={arm}&size=20{extra}").get_json()
        for row in page["rows"]:
            seen.update(i["id"] for i in row["items"])
    return seen


def _popular_item(client) -> str:
    return client.get("/v1/users/nobody-at-all/homepage?rows=for_you").get_json()["rows"][0]["items"][0]["id"]


def test_item_changes_need_the_admin_token(client):
    assert client.delete("/v1/items/i1").status_code == 401
    refused = client.put("/v1/items/x1", json={"item": {"title": "X"}}, headers={"Authorization": "Bearer " + "r" * 20})
    assert refused.status_code == 401
    bad = client.put("/v1/items/x1", json={"item": {"title": "X", "colour": "red"}}, headers=AUTH)
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "item.colour"
    bad = client.patch("/v1/items/x1", json={"item": {"item_format": 3}}, headers=AUTH)
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "item.item_format"


def test_the_item_endpoints_answer_as_the_served_document_describes(client):
    """Requests the served document allows (its ItemFields completed from the live catalog schema) are
    accepted, and every answer, errors included, is one it describes."""
    import yaml

    document = yaml.safe_load(client.get("/openapi.yaml").data)
    fields = document["components"]["schemas"]["ItemFields"]["properties"]
    assert {"title", "item_format", "language", "country", "categories", "published_at"} <= set(fields)
    assert fields["country"]["type"] == "array" and fields["item_format"]["nullable"] is True
    item = {"title": "Documented", "item_format": "ebook", "language": "en", "country": ["US"],
            "categories": ["history"], "published_at": "2026-01-02"}
    exchanges = [
        (client.put("/v1/items/doc-1", headers=AUTH, json={"item": item, "change_id": "doc-1-put"}), 200, True),
        (client.put("/v1/items/doc-1", headers=AUTH, json={"item": item, "change_id": "doc-1-put"}), 200, True),
        (client.patch("/v1/items/doc-1", headers=AUTH, json={"item": {"categories": None}}), 200, True),
        (client.put("/v1/items/doc-1", headers=AUTH, json={"item": {**item, "title": "Other"},
                                                           "change_id": "doc-1-put"}), 409, True),
        (client.post("/v1/items/changes", headers=AUTH, json={"changes": [
            {"op": "put", "item_id": "doc-2", "item": item}, {"op": "delete", "item_id": "doc-2"}]}), 200, True),
        (client.delete("/v1/items/doc-1?change_id=doc-1-gone", headers=AUTH), 200, True),
        (client.put("/v1/items/doc-1", headers=AUTH, json={"item": {"title": "X", "colour": "red"}}), 400, False),
        (client.delete("/v1/items/doc-1"), 401, True),
    ]
    for response, status, valid_request in exchanges:
        assert_valid_exchange(response, status, valid_request=valid_request, document=document)
    assert exchanges[1][0].get_json()["status"] == "duplicate"


def test_a_takedown_leaves_every_row_of_every_arm_within_the_bound_and_a_put_restores_it(es, client, shop):
    settings, _ = shop
    users = [f"u{n}" for n in range(8)]
    victim = _popular_item(client)
    for arm in ("control", "candidate"):
        assert victim in _items_on_pages(client, users, arm) | _items_on_pages(client, ["someone-new"], arm)
    started = time.monotonic()
    taken = client.delete(f"/v1/items/{victim}", headers=AUTH)
    answered = time.monotonic()
    body = taken.get_json()
    assert taken.status_code == 200 and body["pairs"] == {"control": "taken_down", "candidate": "taken_down"}
    another = create_app(settings).test_client()   # another worker: learns it from the change log
    deadline = answered + TAKEDOWN_BOUND_S
    while True:
        shown = [arm for arm in ("control", "candidate") for c in (client, another)
                 if victim in _items_on_pages(c, [*users, "someone-new"], arm)]
        if not shown or time.monotonic() > deadline:
            break
    assert not shown, f"{victim} still served by {shown} {time.monotonic() - started:.2f} s after the takedown"
    for arm_alias in (settings.item_alias, f"{settings.item_alias}@candidate"):
        assert not es.exists(index=arm_alias, id=victim)

    gens = Generations(es, settings)
    restored = client.put(f"/v1/items/{victim}", headers=AUTH,
                          json={"item": {"title": "Back again", "item_format": "ebook", "language": "en",
                                         "country": ["US"], "categories": ["history"]}}).get_json()
    assert restored["pairs"]["control"] == "created" and restored["vector"] == "trained"
    assert es.get(index=gens.live_index("item"), id=victim)["_source"]["title"] == "Back again"


def test_a_new_item_gets_its_vector_from_the_pair_s_own_encoder_and_matching_rows_show_it(es, client, shop):
    settings, work = shop
    fields = {"title": "Secret Garden Of Code", "item_format": "audiobook", "language": "en", "country": ["US", "GB"],
              "categories": ["brand-new-shelf"], "published_at": "2026-03-30"}
    answer = client.put("/v1/items/new-1", headers=AUTH, json={"item": fields}).get_json()
    assert answer["vector"] == "content" and set(answer["pairs"].values()) == {"created"}
    encoder = ExportedItemEncoder(pipeline.paths(work)["embeddings"])
    expected = encoder.vector("new-1", fields)
    index = alias_index(es, settings.item_alias)
    meta = read_meta(es, index)
    stored = np.asarray(es.get(index=index, id="new-1", source_exclude_vectors=False)["_source"]["item_embed"])
    np.testing.assert_allclose(stored[:-1] * meta.item_vector_scale, expected, atol=1e-5)   # the reduction undone
    partition = meta.partitions["item_format"]["audiobook"]["field"]
    assert partition in es.get(index=index, id="new-1", source_exclude_vectors=False)["_source"]
    row = {"rows": [{"id": "shelf", "ad_hoc": True, "filter": [{"term": {"categories": "brand-new-shelf"}}]}]}
    for arm in ("control", "candidate"):
        items = client.post("/v1/users/u3/rows?", json={**row, "arm": arm}).get_json()["rows"][0]["items"]
        assert [i["id"] for i in items] == ["new-1"] and items[0]["title"] == fields["title"]
    elsewhere = {"rows": [{"id": "other", "ad_hoc": True, "filter": [{"term": {"item_format": "podcast"}}]}]}
    assert "new-1" not in {i["id"] for i in client.post("/v1/users/u3/rows", json=elsewhere).get_json()["rows"][0]["items"]}
    patched = client.patch("/v1/items/new-1", headers=AUTH, json={"item": {"published_at": "2026-04-01"}}).get_json()
    assert patched["vector"] == "kept"   # the tower does not read published_at
    patched = client.patch("/v1/items/new-1", headers=AUTH, json={"item": {"item_format": "ebook"}}).get_json()
    assert patched["vector"] == "content"
    source = es.get(index=index, id="new-1", source_exclude_vectors=False)["_source"]
    assert meta.partitions["item_format"]["ebook"]["field"] in source and partition not in source


def test_a_change_applied_twice_changes_nothing(es, shop):
    settings, _ = shop
    changes = ItemChanges(es, settings)
    change = ItemChange("twice-1", "c-twice", "put", {"title": "Twice", "item_format": "document", "language": "de",
                                                     "categories": ["travel"]})
    first = changes.submit(change)
    index = alias_index(es, settings.item_alias)
    before = es.get(index=index, id="twice-1", source_exclude_vectors=False)["_source"]
    again = changes.submit(change)
    changes.replay(index, None)
    changes.replay(index, None)
    assert first.status == "applied" and again.status == "duplicate"
    assert es.get(index=index, id="twice-1", source_exclude_vectors=False)["_source"] == before
    # The change log keeps a node's cluster green (a replica only where a second node can hold it).
    assert es.cluster.health(index=change_log_index(settings))["status"] == "green"


def test_a_retry_of_a_change_a_later_one_followed_does_not_undo_it(es, client, shop):
    """A retry is applied again only while it is the item's newest change: a retried put after a patch
    leaves the patch, and a retried takedown after a restore neither deletes nor hides the item."""
    from urllib.parse import quote

    from app.state import service_of

    settings, _ = shop
    index = alias_index(es, settings.item_alias)
    put = {"item": {"title": "First", "item_format": "ebook", "language": "en"}, "change_id": "retry-1-a"}
    assert client.put("/v1/items/retry-1", headers=AUTH, json=put).status_code == 200
    assert client.patch("/v1/items/retry-1", headers=AUTH,
                        json={"item": {"title": "Later"}, "change_id": "retry-1-b"}).status_code == 200
    retried = client.put("/v1/items/retry-1", headers=AUTH, json=put).get_json()
    assert retried["status"] == "duplicate"
    assert retried["pairs"] == {"control": "superseded", "candidate": "superseded"}
    assert es.get(index=index, id="retry-1")["_source"]["title"] == "Later"

    assert client.delete("/v1/items/retry-1?change_id=retry-1-c", headers=AUTH).status_code == 200
    assert client.put("/v1/items/retry-1", headers=AUTH, json={**put, "change_id": "retry-1-d"}).status_code == 200
    again = client.delete("/v1/items/retry-1?change_id=retry-1-c", headers=AUTH).get_json()
    assert again["status"] == "duplicate" and set(again["pairs"].values()) == {"superseded"}
    assert es.exists(index=index, id="retry-1")
    assert "retry-1" not in service_of(client.application).takedowns.ids()
    fresh = create_app(settings)                      # another process, from the log alone
    assert "retry-1" not in service_of(fresh).takedowns.ids()

    # A reused change id in a batch names its place; the changes before it are applied.
    reused = client.post("/v1/items/changes", headers=AUTH, json={"changes": [
        {"op": "put", "item_id": "retry-2", "item": {"title": "Two"}, "change_id": "retry-2-a"},
        {"op": "put", "item_id": "retry-1", "item": {"title": "Other"}, "change_id": "retry-1-a"}]})
    assert reused.status_code == 409 and reused.get_json()["error"]["field"] == "changes[1].change_id"
    assert es.exists(index=index, id="retry-2")
    # An id too long for the change log's document ids (600 bytes of UTF-8) is refused, naming it.
    long_id = quote("語" * 200)
    for response in (client.delete(f"/v1/items/{long_id}", headers=AUTH),
                     client.post("/v1/items/changes", headers=AUTH,
                                 json={"changes": [{"op": "delete", "item_id": "語" * 200}]})):
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"]["field"] in ("item_id", "changes[0].item_id")


def test_a_process_killed_between_the_log_write_and_the_apply_loses_no_change(es, shop):
    settings, _ = shop
    script = ("import os, signal, sys\n"
              "from datetime import datetime, timezone\n"
              "from facetrec.es import make_client\n"
              "from facetrec.items.changes import ItemChange\n"
              "from facetrec.items.log import ItemChangeLog\n"
              "from facetrec.settings import Settings\n"
              "settings = Settings.from_env()\n"
              "log = ItemChangeLog(make_client(settings), settings)\n"
              "log.record(ItemChange('killed-1', 'k1', 'put', {'title': 'Killed', 'item_format': 'ebook'}), "
              "datetime.now(timezone.utc))\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "ES_URL": settings.es_url, "FACETREC_ITEM_ALIAS": settings.item_alias,
           "FACETREC_USER_ALIAS": settings.user_alias, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    index = alias_index(es, settings.item_alias)
    assert not es.exists(index=index, id="killed-1")          # logged, never applied
    # What the next publish and a rollback do by themselves (`facetrec items replay` does it now).
    ItemChanges(es, settings).replay(index, None)
    assert es.get(index=index, id="killed-1")["_source"]["title"] == "Killed"


def test_a_taken_down_item_stays_out_after_a_rollback_to_a_pair_made_before_it(es, client, shop):
    settings, work = shop
    gens = Generations(es, settings)
    pipeline.step_publish(work, settings, ROWS, generation="20260401-000003", progress=False)
    victim = _popular_item(client)
    client.delete(f"/v1/items/{victim}", headers=AUTH)
    assert gens.rollback()["item"].endswith("20260401-000001")    # a pair made before the takedown
    assert not es.exists(index=alias_index(es, settings.item_alias), id=victim)
    assert victim not in _items_on_pages(create_app(settings).test_client(), ["u1", "u2", "someone-new"], "control")


def test_an_event_naming_an_item_the_catalog_lacks_is_left_out_of_the_history(client):
    body = {"events": [{"item_id": "no-such-item", "ts": "2026-04-02T10:00:00Z"},
                       {"item_id": "i10", "ts": "2026-04-02T10:01:00Z"}]}
    answer = client.post("/v1/users/u7/events", json=body).get_json()
    assert answer["unknown_items"] == 1 and answer["items_added"] == 1


def test_the_schema_check_uses_the_live_catalog(client):
    response = client.post("/v1/items/changes", headers=AUTH, json={"changes": [
        {"op": "put", "item_id": "b1", "item": {"title": "B", "language": "en"}},
        {"op": "delete", "item_id": "b2"},
        {"op": "patch", "item_id": "b3", "item": {"language": ["en"]}}]})
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "changes[2].item.language"
    recorded = client.post("/v1/items/changes", headers=AUTH, json={"changes": [
        {"op": "delete", "item_id": "not-in-any-pair", "change_id": "td-1"}]}).get_json()["changes"][0]
    assert set(recorded["pairs"].values()) == {"not_held"}   # recorded anyway: it may arrive tonight


def test_row_counts_follow_item_changes(es, shop):
    """The planner's estimates: a generation whose item count moved is counted again in the background."""
    from facetrec.catalog.counts import StatsCache

    settings, _ = shop
    catalog = RowCatalog.from_settings(settings)
    cache = StatsCache(list(catalog.rows.values()), catalog.user_filters, changes_check_s=0.0)
    generation = read_meta(es, alias_index(es, settings.item_alias)).generation
    comedy = catalog.rows["comedy"]
    from facetrec.catalog.rows import row_filter
    # The comedies now (earlier tests of this module took items down and added some).
    before = es.count(index=settings.item_alias, query=row_filter(comedy, []))["count"]
    cache.get(es, settings.item_alias, generation, 5.0)
    ItemChanges(es, settings).submit(ItemChange("comedy-new", "c-comedy", "put", {
        "title": "A Very Funny Book", "item_format": "ebook", "language": "en", "categories": ["comedy"]}))
    deadline = time.monotonic() + 30   # a background count (counts and centroids)
    while time.monotonic() < deadline:
        counted = cache.get(es, settings.item_alias, generation, 5.0).rows["comedy"]["docs"]
        if counted == before + 1:
            break
        time.sleep(0.1)
    assert counted == before + 1
