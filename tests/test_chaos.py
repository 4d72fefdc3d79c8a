"""Chaos: publishes SIGKILLed at every step, a timeout on the alias swap, a users-only refresh of a
foreign model, rollbacks after refreshes; a reader on the service throughout.

After every step: each alias names exactly one index; the two live indices are one pair (same
model_version, the user index made for the live item index); live doc counts equal the input; and
the reader has seen no failed page and no page whose scores are not those of ONE pair's user
vector and items (checked against the vectors this test published, not against what the service
says about itself).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from elasticsearch import ConnectionTimeout

from app import create_app
from facetrec.catalog.rows import RowCatalog
from ingest.embedding.synthetic import embedding_records
from ingest.indexing.generations import Generations, ModelMismatch
from ingest.indexing.lock import LockHeld, ReindexLock
from ingest.indexing.reindex import run_reindex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITEMS, N_USERS = 300, 30
LEASE_S = 3.0
KILLS = 22
# The step markers run_reindex prints (``facetrec: [publish G] <step> ...``), in order.
PHASES = ("cleanup", "create", "load", "validate", "swap", "retention")


class World:
    """What this test published: vectors per item and user generation, parquet files per model."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.items: dict[str, dict[str, np.ndarray]] = {}  # item generation -> item id -> vector
        self.users: dict[str, dict[str, np.ndarray]] = {}  # user generation -> user id -> vector
        self._data: dict[tuple, tuple] = {}

    def data(self, model: int, refresh: int = 0):
        """Items and users of model ``model``; ``refresh`` > 0 gives that model's users on a later day."""
        key = (model, refresh)
        if key not in self._data:
            items, _, _, _ = embedding_records(N_ITEMS, N_USERS, seed=100 + model)
            _, users, _, _ = embedding_records(N_ITEMS, N_USERS, seed=100 + model + 1000 * refresh)
            paths = {}
            for name, records in (("items", items), ("users", users)):
                path = self.tmp / f"m{model}-r{refresh}-{name}.parquet"
                pd.DataFrame([{k: (list(map(float, v)) if k.endswith("_embed") else v) for k, v in r.items()}
                              for r in records]).to_parquet(path, index=False)
                paths[name] = str(path)
            self._data[key] = (items, users, paths)
        return self._data[key]

    def register(self, generation: str, model: int, refresh: int, users_only: bool, item_generation: str) -> None:
        items, users, _ = self.data(model, refresh)
        if not users_only:
            self.items[generation] = {r["item_id"]: np.asarray(r["item_embed"], np.float64) for r in items}
        self.users[generation] = {u["user_id"]: np.asarray(u["user_embed"], np.float64) for u in users}
        assert item_generation in self.items


class Reader(threading.Thread):
    """Hits the service through Flask's test client and checks every page against the vectors."""

    def __init__(self, app, world: World, user_ids: list[str]):
        super().__init__(daemon=True)
        self.client, self.world, self.user_ids = app.test_client(), world, user_ids
        self.stop = threading.Event()
        self.pages = 0
        self.failed: list[str] = []
        self.mixed: list[str] = []
        self.pairs_seen: set[tuple[str, str]] = set()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            user_id = self.user_ids[i % len(self.user_ids)]
            i += 1
            response = self.client.get(f"/v1/users/{user_id}/homepage?rows=for_you,ebooks")
            if response.status_code != 200:
                self.failed.append(f"{response.status_code} {response.get_data(as_text=True)[:200]}")
                continue
            page = response.json
            self.pages += 1
            self.check(user_id, page)
            time.sleep(0.01)

    def check(self, user_id: str, page: dict) -> None:
        item_gen, user_gen = page["generation"], page["user_generation"]
        self.pairs_seen.add((item_gen, user_gen))
        if any(r.get("error") or not r["items"] for r in page["rows"]):
            self.failed.append(f"row error or empty row: {page}")
            return
        user = self.world.users[user_gen][user_id]
        items = self.world.items[item_gen]
        for row in page["rows"]:
            for item in row["items"]:
                expected = float(user @ items[item["id"]])
                if abs(item["score"] - expected) > 1e-3 + 1e-4 * abs(expected):
                    self.mixed.append(f"user gen {user_gen}, item gen {item_gen}, {item['id']}: served "
                                      f"{item['score']}, that pair's dot is {expected:.6f}")
                    return


@pytest.fixture
def chaos(es, es_settings, unique, tmp_path):
    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="flat", lock_lease_s=LEASE_S, generations_to_keep=2)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    world = World(tmp_path)
    yield settings, catalog, world


def _publish(es, settings, catalog, world, generation, model, refresh=0, users_only=False):
    """Publish in this process (the retried run), waiting while a killed run's lease runs out."""
    items, users, _ = world.data(model, refresh)
    deadline = time.monotonic() + LEASE_S * 5
    while True:
        try:
            return run_reindex(es, settings, catalog, items=None if users_only else items, users=users,
                               model_version=f"m{model}", generation=generation, progress=False, sample_users=5)
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _publish_and_kill(settings, world, generation, model, refresh, users_only, phase, rng, at_phase=None) -> str:
    """Run `facetrec index publish` in a subprocess and SIGKILL it just after it announces ``phase``
    (after calling ``at_phase``, when given). Returns what the kill interrupted."""
    _, _, paths = world.data(model, refresh)
    cmd = [sys.executable, "-u", "-m", "facetrec_cli", "index", "publish", "--users", paths["users"],
           "--model-version", f"m{model}", "--generation", generation]
    if not users_only:
        cmd += ["--items", paths["items"]]
    env = {**os.environ, "ES_URL": settings.es_url, "FACETREC_ITEM_ALIAS": settings.item_alias,
           "FACETREC_USER_ALIAS": settings.user_alias, "FACETREC_INDEX_TYPE": "flat",
           "FACETREC_LOCK_LEASE_S": str(LEASE_S), "FACETREC_GENERATIONS_TO_KEEP": "2"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    marker = f"] {phase}"
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                if at_phase is not None:
                    at_phase()
                time.sleep(rng.uniform(0, 0.04))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return f"killed after '{phase}'"
            if "Traceback" in line:
                break
        code = proc.wait()
        return f"exited {code} before '{phase}': {''.join(lines)[-800:]}"
    finally:
        proc.kill()
        proc.wait()


def _check_invariants(es, settings, reader: Reader, step: str) -> None:
    gens = Generations(es, settings)
    # Both aliases in ONE read (one cluster state): a killed run's `_aliases` request can still be
    # applied by the node after the kill, and two separate reads could straddle that one atomic swap.
    aliases = es.indices.get_alias(name=f"{settings.item_alias},{settings.user_alias}")
    live = {}
    for family, alias in (("item", settings.item_alias), ("user", settings.user_alias)):
        names = [index for index, entry in aliases.items() if alias in entry["aliases"]]
        assert len(names) == 1, f"after {step}: alias {alias} names {names}"
        live[family] = names[0]
    item_meta, user_meta = gens.meta(live["item"]), gens.meta(live["user"])
    assert item_meta["model_version"] == user_meta["model_version"], f"after {step}: {item_meta} vs {user_meta}"
    assert user_meta["item_generation"] == item_meta["generation"], f"after {step}: {item_meta} vs {user_meta}"
    assert item_meta["state"] == user_meta["state"] == "validated", f"after {step}"
    assert es.count(index=settings.item_alias)["count"] == N_ITEMS, f"after {step}"
    assert es.count(index=settings.user_alias)["count"] == N_USERS, f"after {step}"
    assert reader.failed == [], f"after {step}: {reader.failed[:3]}"
    assert reader.mixed == [], f"after {step}: {reader.mixed[:3]}"


def _live_model(es, settings) -> int:
    gens = Generations(es, settings)
    return int(gens.meta(gens.live_index("item"))["model_version"][1:])


@pytest.mark.slow
def test_publishes_killed_at_every_step_never_break_or_mix_the_live_pair(es, chaos, monkeypatch):
    settings, catalog, world = chaos
    rng = random.Random(20261123)
    clock = iter(range(1, 10_000))

    def next_generation() -> str:
        return f"20260101-{next(clock):06d}"

    first = next_generation()
    world.data(1)
    world.register(first, 1, 0, False, first)
    _publish(es, settings, catalog, world, first, 1)
    app = create_app(settings.replace(es_request_timeout_s=5.0), catalog)
    reader = Reader(app, world, [u["user_id"] for u in world.data(1)[1]])
    reader.start()
    log, model, refreshes = [], 1, 0
    try:
        _check_invariants(es, settings, reader, "the first publish")
        for i in range(KILLS):
            phase = PHASES[i % len(PHASES)]
            users_only = i % 3 == 2
            generation = next_generation()
            live_model = _live_model(es, settings)
            if users_only:
                refreshes += 1
                run_model, refresh = live_model, refreshes
                item_generation = Generations(es, settings).live_index("item")[len(settings.item_alias) + 1:]
            else:
                model += 1
                run_model, refresh, item_generation = model, 0, generation
            world.data(run_model, refresh)
            world.register(generation, run_model, refresh, users_only, item_generation)
            outcome = _publish_and_kill(settings, world, generation, run_model, refresh, users_only, phase, rng)
            log.append(f"{generation} {'users' if users_only else 'full'} m{run_model}: {outcome}")
            _check_invariants(es, settings, reader, log[-1])
            # The retry (same generation, as a retried DAG task) completes it, or finds it live.
            result = _publish(es, settings, catalog, world, generation, run_model, refresh, users_only)
            assert result["status"] in ("swapped", "already_live")
            _check_invariants(es, settings, reader, f"the retry of {generation}")

            if i == 4:  # the _aliases call applies, then the client times out
                real_swap = Generations.swap

                def swap_then_time_out(self, targets, **kwargs):
                    real_swap(self, targets, **kwargs)
                    raise ConnectionTimeout("injected: the response to _aliases never came")

                monkeypatch.setattr(Generations, "swap", swap_then_time_out)
                model += 1
                generation = next_generation()
                world.register(generation, model, 0, False, generation)
                assert _publish(es, settings, catalog, world, generation, model)["status"] == "swapped"
                monkeypatch.setattr(Generations, "swap", real_swap)
                _check_invariants(es, settings, reader, "a publish whose _aliases call timed out after applying")
            if i == 7:  # users of a model other than the live items'
                before = Generations(es, settings).live_pair()
                with pytest.raises(ModelMismatch):
                    _publish(es, settings, catalog, world, next_generation(), model + 50, users_only=True)
                assert Generations(es, settings).live_pair() == before
                _check_invariants(es, settings, reader, "a refused foreign-model refresh")
            if i in (8, 14, 20):  # rollback right after a users-only refresh
                with ReindexLock(es, name=f"reindex-{settings.item_alias}", lease_s=LEASE_S) as lock:
                    targets = Generations(es, settings).rollback(fence=lock.fence)
                log.append(f"rollback to {targets}")
                _check_invariants(es, settings, reader, log[-1])
        time.sleep(0.5)
    finally:
        reader.stop.set()
        reader.join(30)
    print("\n".join(log))
    kills = [line for line in log if "killed after" in line]
    assert len(kills) >= 20, log
    assert {phase for phase in PHASES if any(f"'{phase}'" in k for k in kills)} == set(PHASES), log
    assert reader.failed == [] and reader.mixed == []
    assert reader.pages > 100 and len(reader.pairs_seen) >= 5, (reader.pages, reader.pairs_seen)


@pytest.mark.slow
def test_a_takedown_during_a_publish_killed_at_its_steps_is_absent_from_the_pair_that_goes_live(es, chaos):
    """A takedown lands while a publish runs; the publish is SIGKILLed just after the step; the next
    run of the same generation goes live without the item (its replay of the change log), for a
    takedown at each step; the read path never serves it meanwhile either."""
    from facetrec.items.apply import ItemChanges
    from facetrec.items.changes import ItemChange

    settings, catalog, world = chaos
    rng = random.Random(20261207)
    _publish(es, settings, catalog, world, "20260101-000001", model=1)
    world.register("20260101-000001", 1, 0, False, "20260101-000001")
    items, _, _ = world.data(1)
    changes = ItemChanges(es, settings)
    app = create_app(settings.replace(es_request_timeout_s=5.0), catalog)
    victims = []
    for n, phase in enumerate(("create", "load", "validate", "swap"), start=2):
        generation = f"20260101-{n:06d}"
        victim = items[10 + n]["item_id"]
        victims.append(victim)

        def take_down(victim=victim):
            changes.submit(ItemChange(victim, f"td-{victim}", "delete", {}))

        outcome = _publish_and_kill(settings, world, generation, 1, 0, False, phase, rng, at_phase=take_down)
        assert outcome.startswith("killed"), outcome
        result = _publish(es, settings, catalog, world, generation, model=1)
        assert result["status"] in ("swapped", "already_live"), result
        live = Generations(es, settings).live_index("item")
        assert live.endswith(generation), (phase, live)
        for gone in victims:
            assert not es.exists(index=live, id=gone), f"{gone} (taken down during '{phase}') is in {live}"
        assert es.count(index=live)["count"] == N_ITEMS - len(victims)
        served = {i["id"] for u in range(N_USERS) for row in app.test_client().get(
            f"/v1/users/u{u}/homepage?rows=for_you,ebooks&size=20").json["rows"] for i in row["items"]}
        assert not served & set(victims), (phase, served & set(victims))
