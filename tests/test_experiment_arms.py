"""Experiment arms on the real node, through the service: two models live at once, each user served
by its arm's pair, fresh events in every arm's pair, a promote under homepage traffic with no
failed and no mixed page, a stop, and the readout from the service's own impression lines."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from app import create_app
from app.logs import JsonFormatter
from facetrec.catalog.rows import RowCatalog
from facetrec.es import alias_index
from facetrec.events.log import event_log_index
from facetrec.experiments import CONTROL, arm_aliases, read_experiment
from facetrec.model import user_encoder
from ingest.embedding.seeded_encoder import SeededUserModel
from ingest.embedding.synthetic import embedding_records
from ingest.experiments import lifecycle as experiments
from ingest.experiments.report import impression_lines, report
from ingest.indexing.reindex import run_reindex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFRESH_S = 1.0
pytestmark = pytest.mark.slow


def _model(root, name: str, seed: int):
    """A pair's records and its exported, registered user encoder (model ``name``)."""
    items, users, item_vectors, _ = embedding_records(n_items=600, n_users=40, dims=64, seed=seed)
    model = SeededUserModel(np.asarray(item_vectors, np.float32), [i["item_id"] for i in items])
    users = [{**u, "user_embed": model.user_vector(u["seen_item_ids"])} for u in users]
    model.export(root / name)
    return items, users


@pytest.fixture(scope="module")
def world(es, es_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    prefix = f"ar-{uuid.uuid4().hex[:8]}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="flat", models_root=root / "models", experiment_refresh_s=REFRESH_S,
                                   lock_lease_s=20.0)
    models = {name: _model(root, name, seed) for name, seed in (("m-a", 31), ("m-b", 32), ("m-c", 33))}
    for name in models:
        user_encoder.register(root / name, settings.models_root, name)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    yield settings, catalog, models
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


def _publish(es, settings, catalog, models, model: str, generation: str, arm: str | None = None) -> dict:
    items, users = models[model]
    return run_reindex(es, settings, catalog, items=items, users=users, model_version=model, generation=generation,
                       progress=False, sample_users=3, arm=arm)


def _start(es, settings, catalog, models, experiment: str, arm: str, model: str, generation: str, weight=0.5):
    return experiments.start(es, settings, experiment_id=experiment, arm=arm, weight=weight,
                             publish=lambda a: _publish(es, settings, catalog, models, model, generation, arm=a))


class Impressions(logging.Handler):
    """The service's impression lines, as its JSON log writes them, into a file."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.setFormatter(JsonFormatter())
        self._file = open(path, "a")

    def emit(self, record):
        self._file.write(self.format(record) + "\n")
        self._file.flush()


@pytest.fixture
def impressions(tmp_path):
    handler = Impressions(tmp_path / "service.log")
    logger = logging.getLogger("facetrec.impressions")
    logger.addHandler(handler)
    yield handler.path
    logger.removeHandler(handler)


def _events_in(es, index: str, user_id: str) -> list[str]:
    return es.get(index=index, id=user_id, source_includes=["event_batch_ids"])["_source"].get("event_batch_ids", [])


def test_arms_serve_their_own_pair_events_reach_both_and_the_readout_tells_the_arms_apart(es, world, impressions):
    settings, catalog, models = world
    _publish(es, settings, catalog, models, "m-a", "20260101-000001")
    client = create_app(settings, catalog).test_client()
    users = [u["user_id"] for u in models["m-a"][1]]
    page = client.get(f"/v1/users/{users[0]}/homepage").get_json()
    assert page["arm"] == CONTROL and page["experiment"] is None

    started = _start(es, settings, catalog, models, "exp-1", "cand", "m-b", "20260101-000002")
    assert started["publish"]["status"] == "swapped"
    assert alias_index(es, settings.item_alias).endswith("20260101-000001"), "control untouched"
    assert alias_index(es, arm_aliases(settings, "cand")[0]).endswith("20260101-000002")
    experiment = read_experiment(es, settings)
    assert experiment.arm_names == [CONTROL, "cand"] and experiment.arm("cand").model_version == "m-b"

    served = {}
    for user_id in users:
        pages = [client.get(f"/v1/users/{user_id}/homepage").get_json() for _ in range(2)]
        assert pages[0]["arm"] == pages[1]["arm"] == experiment.assign(user_id), "stable, as the hash says"
        assert all(p["experiment"] == "exp-1" for p in pages)
        want = "20260101-000002" if pages[0]["arm"] == "cand" else "20260101-000001"
        assert all(p["generation"] == p["user_generation"] == want for p in pages), "only the arm's own pair"
        served[user_id] = pages[0]
    assert {p["arm"] for p in served.values()} == {CONTROL, "cand"}

    pinned = client.get(f"/v1/users/{users[0]}/homepage?arm=cand").get_json()
    assert pinned["arm"] == "cand" and pinned["generation"] == "20260101-000002"
    for bad, why in (("nope", "not a live arm"), ("Bad!", "arm name")):
        refused = client.get(f"/v1/users/{users[0]}/homepage?arm={bad}")
        error = refused.get_json()["error"]
        assert refused.status_code == 400 and error["field"] == "arm" and why in error["message"]

    # A fresh batch goes to both pairs, each vector made by that pair's own model.
    body = {"batch_id": "arms-1", "events": [{"item_id": "i7", "ts": datetime.now(timezone.utc).isoformat()}]}
    applied = client.post(f"/v1/users/{users[1]}/events", json=body).get_json()
    assert applied["status"] == "applied" and applied["arms"] == {"cand": "applied"}
    for index in (alias_index(es, settings.user_alias), alias_index(es, arm_aliases(settings, "cand")[1])):
        assert "arms-1" in _events_in(es, index, users[1])

    # The readout: users of the candidate act on what they were shown, control users on something else.
    now = datetime.now(timezone.utc)
    for n, (user_id, page) in enumerate(served.items()):
        shown = [i["id"] for row in page["rows"] for i in row["items"]]
        item = shown[0] if page["arm"] == "cand" else next(i["item_id"] for i in models["m-a"][0]
                                                           if i["item_id"] not in shown)
        body = {"batch_id": f"read-{n}", "events": [{"item_id": item, "ts": (now + timedelta(seconds=1)).isoformat()}]}
        assert client.post(f"/v1/users/{user_id}/events", json=body).status_code == 200
    result = report(es, event_log_index(settings), impression_lines([impressions]), timedelta(hours=1), "exp-1",
                    as_of=now + timedelta(hours=2))   # read once every page's window has closed
    arms = result["arms"]
    assert arms["cand"]["hits"] == arms["cand"]["users"] == sum(p["arm"] == "cand" for p in served.values())
    assert arms[CONTROL]["hits"] == 0 and arms[CONTROL]["users"] == len(users) - arms["cand"]["users"]
    assert arms["cand"]["vs_control"]["significant"]
    assert arms["cand"]["pages"] + arms[CONTROL]["pages"] == 2 * len(users), "pinned pages left out"
    assert arms["cand"]["generations"] == ["20260101-000002"] and arms[CONTROL]["generations"] == ["20260101-000001"]

    stopped = experiments.stop(es, settings, "cand")
    assert stopped["stopped"] == ["cand"] and read_experiment(es, settings) is None
    assert alias_index(es, arm_aliases(settings, "cand")[1]) is None
    assert es.indices.exists(index=f"{settings.user_alias}-20260101-000002"), "its pair is left to retention"
    time.sleep(REFRESH_S + 0.5)
    assert client.get(f"/v1/users/{users[0]}/homepage").get_json()["arm"] == CONTROL


def test_a_candidate_that_fails_validation_starts_no_arm_and_touches_no_alias(es, world):
    from ingest.indexing.validate import ValidationFailed

    settings, catalog, models = world
    _publish(es, settings, catalog, models, "m-a", "20260103-000001")
    control = (alias_index(es, settings.item_alias), alias_index(es, settings.user_alias))
    items, users = models["m-b"]

    def bad_publish(arm):
        return run_reindex(es, settings, catalog, items=items, users=users, model_version="m-b",
                           generation="20260103-000002", expected_users=len(users) + 1, progress=False,
                           sample_users=3, arm=arm)

    with pytest.raises(ValidationFailed, match="count"):
        experiments.start(es, settings, experiment_id="exp-bad", arm="cand", weight=0.5, publish=bad_publish)
    assert (alias_index(es, settings.item_alias), alias_index(es, settings.user_alias)) == control
    assert alias_index(es, arm_aliases(settings, "cand")[0]) is None and read_experiment(es, settings) is None
    assert not es.indices.exists(index=f"{settings.user_alias}-20260103-000002"), "the half-made pair is gone"


def test_an_arms_pair_never_costs_control_its_rollback_pair_and_a_rollback_never_lands_on_an_arm(es, world):
    from ingest.indexing.generations import Generations

    settings, catalog, models = world
    gens = Generations(es, settings)
    for generation in ("20260104-000001", "20260104-000002"):
        _publish(es, settings, catalog, models, "m-a", generation)
    _start(es, settings, catalog, models, "exp-keep", "cand", "m-b", "20260104-000003", weight=0.3)
    assert {"20260104-000001", "20260104-000002"} <= {p.generation for p in gens.pairs()}, \
        "publishing the arm kept control's live pair and the one before it"
    _publish(es, settings, catalog, models, "m-a", "20260104-000004")          # the nightly job, meanwhile
    assert {"20260104-000002", "20260104-000003", "20260104-000004"} <= {p.generation for p in gens.pairs()}, \
        "the arm's pair did not count against control's kept pairs (its live one and the one before)"
    rolled = gens.rollback()
    assert rolled["user"].endswith("20260104-000002"), "control rolls back along its own pairs, not onto the arm's"
    assert alias_index(es, arm_aliases(settings, "cand")[1]).endswith("20260104-000003")
    with pytest.raises(Exception, match="is live behind"):
        gens.create("user", "20260104-000003", "m-a")   # an arm's live index is never replaced
    experiments.stop(es, settings, "cand")
    assert not next(p for p in gens.pairs() if p.generation == "20260104-000003").usable, "retired: no rollback target"


def test_a_promote_under_homepage_and_event_traffic_fails_no_page_mixes_none_and_loses_no_event(es, world):
    settings, catalog, models = world
    _publish(es, settings, catalog, models, "m-a", "20260102-000001")
    app = create_app(settings, catalog)
    users = [u["user_id"] for u in models["m-a"][1]]
    control_generation, arm_generation = "20260102-000001", "20260102-000002"
    stop = threading.Event()
    failed: list[str] = []
    mixed: list[str] = []
    posted: list[tuple[str, str, float]] = []   # (user, batch id, when accepted)

    def reader(offset: int):
        client = app.test_client()
        moved = set()   # users whose control page already came from the promoted pair
        n = offset
        while not stop.is_set():
            user_id = users[n % len(users)]
            n += 1
            response = client.get(f"/v1/users/{user_id}/homepage")
            if response.status_code != 200:
                failed.append(f"{user_id}: {response.status_code} {response.get_data(as_text=True)[:200]}")
                continue
            page = response.get_json()
            generation = page["generation"]
            if page["user_generation"] != generation or any(
                    i.get("generation", generation) != generation for row in page["rows"] for i in row["items"]):
                mixed.append(f"{user_id}: {page['user_generation']} vs {generation}")
            elif page["arm"] == "cand" and generation != arm_generation:
                mixed.append(f"{user_id}: arm cand served {generation}")
            elif page["arm"] == CONTROL:
                if generation == arm_generation:
                    moved.add(user_id)
                elif generation != control_generation or user_id in moved:
                    mixed.append(f"{user_id}: control served {generation} after the promoted pair")

    def writer():
        client = app.test_client()
        n = 0
        while not stop.is_set():
            user_id = users[n % len(users)]
            batch = f"traffic-{n}"
            n += 1
            body = {"batch_id": batch, "events": [{"item_id": f"i{n % 600}", "ts": datetime.now(timezone.utc).isoformat()}]}
            response = client.post(f"/v1/users/{user_id}/events", json=body)
            if response.status_code == 200:
                posted.append((user_id, batch, time.monotonic()))
            else:
                failed.append(f"event {batch}: {response.status_code}")
            time.sleep(0.05)

    threads = [threading.Thread(target=reader, args=(k * 7,)) for k in range(2)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        _start(es, settings, catalog, models, "exp-2", "cand", "m-c", arm_generation)   # events flow meanwhile
        time.sleep(1.0)
        promote_began = time.monotonic()
        promoted = experiments.promote(es, settings, "cand")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert promoted["control"]["user"].endswith(arm_generation)
    assert not failed, failed[:5]
    assert not mixed, mixed[:5]
    assert read_experiment(es, settings) is None
    assert alias_index(es, settings.user_alias).endswith(arm_generation)
    assert alias_index(es, arm_aliases(settings, "cand")[1]) is None

    # Every accepted batch is in the promoted pair (it was an arm, then the control), and every batch
    # accepted before the promote began is in the old control pair too: no arm lost one.
    promoted_users = f"{settings.user_alias}-{arm_generation}"
    old_users = f"{settings.user_alias}-{control_generation}"
    es.indices.refresh(index=[promoted_users, old_users])
    assert len(posted) > 20
    by_user: dict[tuple[str, str], list[str]] = {}
    for user_id, batch, at in posted:
        for index in (promoted_users, *((old_users,) if at < promote_began else ())):
            remembered = by_user.setdefault((index, user_id), _events_in(es, index, user_id))
            assert batch in remembered, f"{batch} of {user_id} missing from {index}"
    page = app.test_client().get(f"/v1/users/{users[0]}/homepage").get_json()
    assert page["arm"] == CONTROL and page["generation"] == arm_generation and page["experiment"] is None
