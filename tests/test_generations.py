"""Index generations against the real node: templates, load, validation gate, atomic swap,
retention, rollback, crash safety, the lock, and reads that never see a mix of generations."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from catalogs import bundled_schema
from facetrec.catalog.meta import read_meta
from facetrec.catalog.rows import RowCatalog
from facetrec.serving.homepage import SearchConfig, recommend
from ingest.embedding.synthetic import embedding_records
from ingest.indexing import templates
from ingest.indexing.generations import Generations
from ingest.indexing.lock import LockHeld, ReindexLock
from ingest.indexing.reindex import run_reindex
from ingest.indexing.validate import ValidationFailed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE_S = 4.0  # the re-index lock's lease in these tests: a killed run's lock runs out this fast


@pytest.fixture(scope="module")
def small_data():
    items, users, _, _ = embedding_records(n_items=1500, n_users=200, dims=64, seed=3)
    return items, users


@pytest.fixture
def settings(es_settings, unique):
    return es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                               index_type="flat", lock_lease_s=LEASE_S)


@pytest.fixture(scope="module")
def catalog():
    return RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))


def publish(es, settings, catalog, data, generation, **kwargs):
    items, users = data
    return run_reindex(es, settings, catalog, items=items, users=users, model_version="test-model",
                       generation=generation, progress=False, sample_users=5, **kwargs)


def publish_when_free(es, settings, catalog, data, generation, timeout_s=LEASE_S * 4, **kwargs):
    """Publish, waiting (as a retried DAG task would) while a dead run's lease runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return publish(es, settings, catalog, data, generation, **kwargs)
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def live(es, settings):
    gens = Generations(es, settings)
    return gens.live_index("item"), gens.live_index("user")


def test_templates_apply_twice_without_change_and_shape_new_generations(es, settings):
    assert sorted(templates.apply(es, settings, "m1")) == sorted(templates.template_name(settings, f)
                                                                 for f in ("item", "user", "events"))
    before = es.indices.get_index_template(name=templates.template_name(settings, "item"))
    assert templates.apply(es, settings, "m1") == []
    assert es.indices.get_index_template(name=templates.template_name(settings, "item")) == before

    schema = bundled_schema("synthetic")
    index = Generations(es, settings).create("item", "20260101-000000", "m1", properties=schema.item_properties(),
                                             catalog_schema=schema.to_json())
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]
    props = mapping["properties"]
    assert mapping["dynamic"] == "strict" and set(schema.facet_types) <= set(props)   # the catalog's facets
    assert read_meta(es, index).catalog_schema.to_dict() == schema.to_dict()
    assert props["item_embed"]["dims"] == settings.vector_dims
    assert props["item_embed"]["similarity"] == "max_inner_product"
    assert props["item_embed"]["index_options"]["type"] == "flat"
    assert props["categories"]["type"] == "keyword" and props["title"]["fields"]["keyword"]["type"] == "keyword"
    index_settings = es.indices.get_settings(index=index)[index]["settings"]["index"]
    assert index_settings["refresh_interval"] == "-1" and index_settings["number_of_replicas"] == "0"


@pytest.mark.slow
def test_publish_swap_retain_and_rollback_with_10k_items(es, settings, catalog):
    items, users, _, _ = embedding_records(n_items=10_000, n_users=2_000, dims=64, seed=5)
    data = (items, users)
    first = publish(es, settings, catalog, data, "20260101-000001")
    assert first["status"] == "swapped" and first["loaded"] == {"item": 10_000, "user": 2_000}
    assert live(es, settings) == (f"{settings.item_alias}-20260101-000001", f"{settings.user_alias}-20260101-000001")
    assert es.count(index=settings.item_alias)["count"] == 10_000
    assert es.count(index=settings.user_alias)["count"] == 2_000

    publish(es, settings, catalog, data, "20260101-000002")
    gens = Generations(es, settings)
    assert [g.generation for g in gens.list("item")] == ["20260101-000001", "20260101-000002"]
    assert live(es, settings)[0].endswith("20260101-000002")

    third = publish(es, settings, catalog, data, "20260101-000003")
    assert third["deleted"] == [f"{settings.item_alias}-20260101-000001", f"{settings.user_alias}-20260101-000001"]
    assert [g.generation for g in gens.list("user")] == ["20260101-000002", "20260101-000003"]
    assert all(g.state == "validated" and g.model_version == "test-model" for g in gens.list("item"))

    # A rerun of the live generation is a no-op.
    assert publish(es, settings, catalog, data, "20260101-000003")["status"] == "already_live"

    assert gens.rollback() == {"item": f"{settings.item_alias}-20260101-000002",
                               "user": f"{settings.user_alias}-20260101-000002"}
    assert live(es, settings) == (f"{settings.item_alias}-20260101-000002", f"{settings.user_alias}-20260101-000002")


def failing_after(records, n):
    for i, record in enumerate(records):
        if i == n:
            raise RuntimeError("source died midway")
        yield record


def test_failure_midway_leaves_aliases_and_next_run_succeeds(es, settings, catalog, small_data):
    items, users = small_data
    publish(es, settings, catalog, small_data, "20260101-000001")
    before = live(es, settings)
    with pytest.raises(RuntimeError, match="source died midway"):
        publish(es, settings, catalog, (failing_after(items, 700), users), "20260101-000002")
    assert live(es, settings) == before
    assert not es.indices.exists(index=f"{settings.item_alias}-20260101-000002")
    target = _alias_target(settings)
    page = recommend(es, target, users[0]["user_id"], catalog.homepage_rows())
    assert page["generation"] == "20260101-000001" and all(r["items"] for r in page["rows"])
    assert publish(es, settings, catalog, small_data, "20260101-000003")["status"] == "swapped"


def test_a_generation_that_cannot_be_green_is_never_swapped(es, settings, catalog, small_data):
    """One replica per shard on a one-node cluster can never be assigned: the publish waits at most
    FACETREC_GREEN_TIMEOUT_S, fails naming why, leaves the aliases where they were and deletes the
    half-made pair; the next publish with replicas the cluster can hold goes live."""
    from ingest.indexing.generations import NotGreen

    publish(es, settings, catalog, small_data, "20260101-000001")
    before = live(es, settings)
    started = time.monotonic()
    with pytest.raises(NotGreen, match=r"is yellow after 2 s: 1 unassigned .* \(1 replica\(s\) per shard on 1 data "
                                       r"node\(s\)\); the aliases were not moved"):
        publish(es, settings.replace(replicas=1, green_timeout_s=2.0), catalog, small_data, "20260101-000002")
    assert time.monotonic() - started < 60
    assert live(es, settings) == before
    assert not es.indices.exists(index=f"{settings.item_alias}-20260101-000002")
    assert not es.indices.exists(index=f"{settings.user_alias}-20260101-000002")
    assert publish(es, settings, catalog, small_data, "20260101-000003")["status"] == "swapped"


def test_generation_ids_differ_within_one_second_and_sort_in_time_order():
    from datetime import datetime, timedelta, timezone

    from ingest.indexing.generations import new_generation_id

    t = datetime(2026, 11, 23, 18, 0, 0, 1, tzinfo=timezone.utc)
    times = [t, t + timedelta(microseconds=1), t + timedelta(milliseconds=400), t + timedelta(seconds=1)]
    ids = [new_generation_id(x) for x in times]
    assert len(set(ids)) == len(ids) and sorted(ids) == ids
    # beside a DAG generation (the data interval's end, to the second) the order still follows time
    assert sorted(["20261123-180001", ids[0], ids[2]]) == [ids[0], ids[2], "20261123-180001"]


def _gen_indices(settings, generation):
    return [f"{settings.item_alias}-{generation}", f"{settings.user_alias}-{generation}"]


def test_a_timeout_after_the_alias_swap_applied_keeps_the_new_live_generation(es, settings, catalog, small_data,
                                                                              monkeypatch):
    """The _aliases call lands, then the client times out: the run reads the aliases back and carries on
    (before: it deleted the new, already live indices and both aliases vanished)."""
    from elasticsearch import ConnectionTimeout

    publish(es, settings, catalog, small_data, "20260101-000001")
    real_swap = Generations.swap

    def swap_then_time_out(self, targets, **kwargs):
        real_swap(self, targets, **kwargs)
        raise ConnectionTimeout("simulated: the response to _aliases never came")

    monkeypatch.setattr(Generations, "swap", swap_then_time_out)
    assert publish(es, settings, catalog, small_data, "20260101-000002")["status"] == "swapped"
    assert live(es, settings) == tuple(_gen_indices(settings, "20260101-000002"))
    assert all(es.indices.exists(index=i) for i in _gen_indices(settings, "20260101-000002"))


def test_a_timeout_before_the_alias_swap_applied_leaves_the_old_generation(es, settings, catalog, small_data,
                                                                           monkeypatch):
    from elasticsearch import ConnectionTimeout

    publish(es, settings, catalog, small_data, "20260101-000001")
    before = live(es, settings)

    def time_out(self, targets, **kwargs):
        raise ConnectionTimeout("simulated: _aliases timed out and was not applied")

    monkeypatch.setattr(Generations, "swap", time_out)
    with pytest.raises(ConnectionTimeout):
        publish(es, settings, catalog, small_data, "20260101-000002")
    assert live(es, settings) == before
    assert not any(es.indices.exists(index=i) for i in _gen_indices(settings, "20260101-000002"))


def test_a_signal_right_after_the_swap_never_deletes_the_live_indices(es, settings, catalog, small_data, monkeypatch):
    publish(es, settings, catalog, small_data, "20260101-000001")
    real_swap = Generations.swap

    def swap_then_interrupt(self, targets, **kwargs):
        real_swap(self, targets, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Generations, "swap", swap_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        publish(es, settings, catalog, small_data, "20260101-000002")
    assert live(es, settings) == tuple(_gen_indices(settings, "20260101-000002"))
    assert es.count(index=settings.item_alias)["count"] == len(small_data[0])


def test_cleanup_deletes_nothing_when_the_aliases_cannot_be_read(es, settings, catalog, small_data):
    from elasticsearch import Elasticsearch

    from ingest.indexing.reindex import delete_unless_aliased

    publish(es, settings, catalog, small_data, "20260101-000001")
    unreachable = Elasticsearch("http://127.0.0.1:9", request_timeout=2, max_retries=0)
    indices = _gen_indices(settings, "20260101-000001")
    assert delete_unless_aliased(unreachable, indices) == []
    assert delete_unless_aliased(es, indices) == []        # both live: nothing to delete
    assert all(es.indices.exists(index=i) for i in indices)


def _alias_target(settings):
    return SearchConfig(item_index=settings.item_alias, user_index=settings.user_alias, similarity=settings.similarity,
                  request_timeout_s=10)


KILLED_LOADER = textwrap.dedent("""
    import sys, time
    from facetrec.catalog.rows import RowCatalog
    from facetrec.settings import Settings
    from facetrec.es import make_client
    from ingest.indexing.reindex import run_reindex
    from ingest.embedding.synthetic import embedding_records

    settings = Settings.from_env().replace(item_alias=sys.argv[1], user_alias=sys.argv[2], index_type="flat")
    items, users, _, _ = embedding_records(n_items=1500, n_users=200, dims=64, seed=3)

    def slow(records):
        for i, r in enumerate(records):
            if i >= 600:
                time.sleep(0.05)
            yield r

    run_reindex(make_client(settings, request_timeout=30), settings, RowCatalog.load(sys.argv[3]),
                items=slow(items), users=users, model_version="test-model", generation="20260101-000002",
                progress=False)
""")


def test_sigkilled_loader_leaves_aliases_and_next_run_succeeds(es, es_settings, settings, catalog, small_data,
                                                               tmp_path):
    publish(es, settings, catalog, small_data, "20260101-000001")
    before = live(es, settings)
    script = tmp_path / "loader.py"
    script.write_text(KILLED_LOADER)
    env = {**os.environ, "ES_URL": es_settings.es_url, "FACETREC_LOCK_LEASE_S": str(LEASE_S)}
    proc = subprocess.Popen([sys.executable, str(script), settings.item_alias, settings.user_alias,
                             os.path.join(REPO, "catalogs", "synthetic", "rows.yaml")], env=env)
    partial = f"{settings.item_alias}-20260101-000002"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if es.indices.exists(index=partial):
            es.indices.refresh(index=partial)
            if es.count(index=partial)["count"] >= 500:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the loader never got going")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert live(es, settings) == before
    page = recommend(es, _alias_target(settings), small_data[1][0]["user_id"], catalog.homepage_rows())
    assert page["generation"] == "20260101-000001"
    # The dead run's lock (once its lease runs out) and partial generation do not block the next run.
    result = publish_when_free(es, settings, catalog, small_data, "20260101-000003")
    assert result["status"] == "swapped"
    assert not es.indices.exists(index=partial)


def test_validation_rejects_count_mismatch(es, settings, catalog, small_data):
    publish(es, settings, catalog, small_data, "20260101-000001")
    before = live(es, settings)
    with pytest.raises(ValidationFailed, match="check 'count' failed.*holds 1500 documents, the input had 1501"):
        publish(es, settings, catalog, small_data, "20260101-000002", expected_items=1501)
    assert live(es, settings) == before


def test_validation_rejects_nan_vector_naming_the_item(es, settings, catalog, small_data):
    items, users = small_data
    broken = [dict(r) for r in items]
    broken[17] = {**broken[17], "item_embed": [math.nan] * 64}
    with pytest.raises(ValidationFailed, match=r"check 'vectors' failed.*NaN.*\(ids: i17\)"):
        publish(es, settings, catalog, (broken, users), "20260101-000001")
    assert live(es, settings) == (None, None)
    assert not es.indices.exists(index=f"{settings.item_alias}-20260101-000001")


def test_validation_rejects_an_all_empty_row(es, settings, small_data):
    catalog = RowCatalog.from_dict({
        "rows": [{"id": "for_you", "title": "For you"},
                 {"id": "vinyl", "title": "Vinyl", "filter": [{"term": {"item_format": "vinyl"}}]}]},
        bundled_schema("synthetic"))
    with pytest.raises(ValidationFailed, match="check 'rows' failed: row 'vinyl' empty for 5 of 5 users"):
        publish(es, settings, catalog, small_data, "20260101-000001")
    assert live(es, settings) == (None, None)


def test_second_concurrent_run_fails_fast_on_the_lock(es, settings, catalog, small_data):
    with ReindexLock(es, name=f"reindex-{settings.item_alias}"):
        began = time.monotonic()
        with pytest.raises(LockHeld, match="another re-index holds the lock"):
            publish(es, settings, catalog, small_data, "20260101-000001")
        assert time.monotonic() - began < 5
    assert live(es, settings) == (None, None)


@pytest.mark.slow
def test_reads_during_swaps_and_rollback_never_fail_or_mix(es, settings, catalog, small_data):
    publish(es, settings, catalog, small_data, "20260101-000001")
    target = _alias_target(settings)
    users = [u["user_id"] for u in small_data[1][:20]]
    stop = threading.Event()
    failures, mixed, pages = [], [], []

    def reader():
        i = 0
        while not stop.is_set():
            try:
                page = recommend(es, target, users[i % len(users)], catalog.homepage_rows())
                generations = {r.get("generation") for r in page["rows"] if r["items"]}
                if len(generations) != 1:
                    mixed.append(generations)
                pages.append(page["generation"])
            except Exception as exc:  # noqa: BLE001 - the test counts every failure
                failures.append(repr(exc))
            i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in (2, 3, 4):
            publish(es, settings, catalog, small_data, f"20260101-00000{n}")
        Generations(es, settings).rollback()
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    assert failures == [] and mixed == []
    assert len(pages) > 20
    assert {"20260101-000001", "20260101-000004"} <= set(pages)
    assert pages[-1] == "20260101-000003"  # after the rollback


def test_parallel_bulk_streams_load_every_document_once_and_name_the_invalid(es, settings, small_data):
    from ingest.indexing.bulk_load import bulk_load
    from ingest.indexing.generations import Generations

    items, _ = small_data
    records = [dict(r) for r in items]
    records[7]["item_embed"] = [float("nan")] * 64
    records[900]["item_embed"] = [0.1] * 63
    templates.apply(es, settings, "m1")
    index = Generations(es, settings).create("item", "20260101-000001", "m1")
    report = bulk_load(es, index, "item", iter(records), generation="20260101-000001", dims=64, chunk_docs=100,
                       progress=False, streams=3)
    es.indices.refresh(index=index)
    assert report.indexed == len(items) - 2 and report.failed_count == 0
    assert report.invalid_count == 2 and {i for i, _ in report.invalid} == {records[7]["item_id"], records[900]["item_id"]}
    assert es.count(index=index)["count"] == len(items) - 2
    with pytest.raises(ValueError, match="streams"):
        bulk_load(es, index, "item", [], generation="g", dims=64, streams=0)


def test_a_stopped_shared_stream_ends_for_every_consumer():
    from ingest.indexing.bulk_load import _SharedStream

    shared = _SharedStream(iter(range(10)))
    assert [next(shared), next(shared)] == [0, 1]
    shared.stop()
    assert list(shared) == [] and list(shared) == []


def test_a_load_against_an_unreachable_cluster_stops_reading_records(es, settings, small_data):
    from elasticsearch import Elasticsearch

    from ingest.indexing.bulk_load import bulk_load

    items, _ = small_data
    consumed = []

    def records():
        for r in items:
            consumed.append(r["item_id"])
            yield r

    dead = Elasticsearch("http://127.0.0.1:9", request_timeout=2)  # nothing listens on the discard port
    with pytest.raises(Exception):
        bulk_load(dead, "nowhere", "item", records(), generation="g", dims=64, chunk_docs=100, progress=False,
                  streams=3, max_retries=0)
    assert len(consumed) < len(items)


def test_spark_partitions_load_with_the_same_bulk_code(es, settings, spark, small_data):
    from facetrec.items.documents import item_fields
    from ingest.indexing.bulk_load import spark_load
    from ingest.indexing.generations import Generations

    items, _ = small_data
    rows = [{**r, "item_embed": [float(x) for x in r["item_embed"]]} for r in items]
    df = spark.createDataFrame(rows).repartition(4)
    templates.apply(es, settings, "m1")
    schema = bundled_schema("synthetic")
    index = Generations(es, settings).create("item", "20260101-000001", "m1", properties=schema.item_properties())
    report = spark_load(df, es_url=settings.es_url, index=index, kind="item", generation="20260101-000001",
                        dims=64, fields=item_fields(schema))
    es.indices.refresh(index=index)
    assert report.indexed == len(items) and report.invalid_count == 0 and report.failed_count == 0
    assert es.count(index=index)["count"] == len(items)
    doc = es.get(index=index, id="i42", source_exclude_vectors=False)["_source"]  # 9.x leaves vectors out by default
    assert doc["categories"] == items[42]["categories"] and len(doc["item_embed"]) == 64


def test_a_spark_load_checks_the_lease_before_and_after_its_job(es, settings, spark, small_data):
    """Executors cannot see the driver's lock: the driver checks it around the job, and a lease lost
    meanwhile fails the load after the job (the swap never comes)."""
    from ingest.indexing.bulk_load import spark_load
    from ingest.indexing.generations import Generations
    from ingest.indexing.lock import LockLost

    items, _ = small_data
    df = spark.createDataFrame([{**r, "item_embed": [float(x) for x in r["item_embed"]]} for r in items[:200]])
    templates.apply(es, settings, "m1")
    index = Generations(es, settings).create("item", "20260101-000001", "m1")
    seen = []

    def check(what):
        es.indices.refresh(index=index)
        seen.append(es.count(index=index)["count"])
        if len(seen) == 2:
            raise LockLost(f"lease taken over while {what}")

    with pytest.raises(LockLost, match="while loading"):
        spark_load(df, es_url=settings.es_url, index=index, kind="item", generation="20260101-000001", dims=64,
                   check=check)
    assert seen == [0, 200]   # once before the executors wrote anything, once after they wrote it all


def test_spark_executors_get_the_same_auth_options_as_the_driver(es_settings):
    from facetrec.es import client_options

    assert client_options(es_settings.replace(es_api_key="k1", es_ca_cert="/ca.pem")) == {"api_key": "k1",
                                                                                       "ca_certs": "/ca.pem"}
    assert client_options(es_settings.replace(es_username="u", es_password="p")) == {"basic_auth": ("u", "p")}
    assert client_options(es_settings.replace(es_api_key=None, es_username=None, es_ca_cert=None)) == {}


# ---- pairs: a user generation and the item generation its vectors were made for ------------------

def _model_data(seed):
    """Items and users of one 'model': vectors differ from model to model, ids do not."""
    items, users, _, _ = embedding_records(n_items=400, n_users=40, dims=64, seed=seed)
    return items, users


def _refreshed_users(data, seed):
    """The same model's users with new vectors (a day's new events)."""
    _, users, _, _ = embedding_records(n_items=400, n_users=40, dims=64, seed=seed)
    return data[0], users


def _publish_users_only(es, settings, catalog, data, generation, model_version):
    return run_reindex(es, settings, catalog, items=None, users=data[1], model_version=model_version,
                       generation=generation, progress=False, sample_users=5)


def _live_models(es, settings):
    gens = Generations(es, settings)
    item, user = live(es, settings)
    return gens.meta(item)["model_version"], gens.meta(user)["model_version"]


def test_users_only_refresh_pairs_with_the_live_items_and_refuses_another_model(es, settings, catalog, capsys):
    import argparse

    from facetrec_cli.index import cmd_index_status
    from ingest.indexing.generations import ModelMismatch

    m1 = _model_data(21)
    run_reindex(es, settings, catalog, items=m1[0], users=m1[1], model_version="m1", generation="20260101-000001",
                progress=False, sample_users=5)
    result = _publish_users_only(es, settings, catalog, _refreshed_users(m1, 22), "20260101-140000", "m1")
    assert result["status"] == "swapped" and result["item_generation"] == "20260101-000001"
    gens = Generations(es, settings)
    user_index = f"{settings.user_alias}-20260101-140000"
    assert live(es, settings) == (f"{settings.item_alias}-20260101-000001", user_index)
    assert gens.meta(user_index)["item_generation"] == "20260101-000001"
    doc = es.get(index=settings.user_alias, id=m1[1][0]["user_id"])["_source"]
    assert doc["generation"] == "20260101-140000" and doc["item_generation"] == "20260101-000001"
    assert gens.live_pair().generation == "20260101-140000" and gens.live_pair().state == "validated"
    capsys.readouterr()
    cmd_index_status(argparse.Namespace(json=False), settings)
    table = capsys.readouterr().out
    live_line = next(line for line in table.splitlines() if "20260101-140000" in line and "*" in line)
    assert live_line.split()[1:6] == ["20260101-140000", "20260101-000001", "m1", "validated", "40"], table

    # Vectors of another model are refused before anything is created; the aliases stay.
    before = live(es, settings)
    with pytest.raises(ModelMismatch, match="model 'm2' but the live items .* are model 'm1'"):
        _publish_users_only(es, settings, catalog, _model_data(23), "20260101-150000", "m2")
    assert live(es, settings) == before
    assert not es.indices.exists(index=f"{settings.user_alias}-20260101-150000")


def test_retention_and_rollback_work_on_whole_pairs_and_never_return_to_a_rolled_back_one(es, settings, catalog):
    """Before: retention kept N per family, so after a users-only refresh rollback paired the
    previous model's items with the current model's users; rollback did not mark what it left."""
    from ingest.indexing.generations import NoPairToRollBackTo

    settings = settings.replace(generations_to_keep=3)
    gens = Generations(es, settings)
    m1, m2 = _model_data(31), _model_data(32)
    g = lambda n: f"20260101-00000{n}"  # noqa: E731
    run_reindex(es, settings, catalog, items=m1[0], users=m1[1], model_version="m1", generation=g(1),
                progress=False, sample_users=5)
    run_reindex(es, settings, catalog, items=m2[0], users=m2[1], model_version="m2", generation=g(2),
                progress=False, sample_users=5)
    _publish_users_only(es, settings, catalog, _refreshed_users(m2, 33), g(3), "m2")
    result = _publish_users_only(es, settings, catalog, _refreshed_users(m2, 34), g(4), "m2")
    # Three pairs kept: (2,4) live, (2,3), (2,2); pair (1,1) goes whole, item 1 with it.
    assert sorted(result["deleted"]) == [f"{settings.item_alias}-{g(1)}", f"{settings.user_alias}-{g(1)}"]
    assert [(p.generation, p.item_index[-len(g(1)):]) for p in gens.pairs()] == [(g(2), g(2)), (g(3), g(2)),
                                                                                (g(4), g(2))]

    assert gens.rollback() == {"item": f"{settings.item_alias}-{g(2)}", "user": f"{settings.user_alias}-{g(3)}"}
    assert _live_models(es, settings) == ("m2", "m2")
    assert gens.rollback()["user"] == f"{settings.user_alias}-{g(2)}"
    states = {p.generation: p.state for p in gens.pairs()}
    assert states == {g(2): "validated", g(3): "rolled_back", g(4): "rolled_back"}
    before = live(es, settings)
    with pytest.raises(NoPairToRollBackTo):
        gens.rollback()
    assert live(es, settings) == before

    # A new nightly; rollback then goes to the last good pair, never to a rolled-back one.
    m3 = _model_data(35)
    result = run_reindex(es, settings, catalog, items=m3[0], users=m3[1], model_version="m3", generation=g(5),
                         progress=False, sample_users=5)
    assert sorted(result["deleted"]) == [f"{settings.user_alias}-{g(3)}", f"{settings.user_alias}-{g(4)}"]
    assert gens.rollback() == {"item": f"{settings.item_alias}-{g(2)}", "user": f"{settings.user_alias}-{g(2)}"}
    assert _live_models(es, settings) == ("m2", "m2")


def test_a_remove_that_no_longer_holds_makes_the_whole_alias_swap_fail(es, settings, catalog, small_data):
    """The swap names the index each alias pointed at (must_exist): if another writer moved an alias
    in between, nothing moves (no alias ends up on two indices or on none)."""
    publish(es, settings, catalog, small_data, "20260101-000001")
    publish(es, settings, catalog, small_data, "20260101-000002")
    gens = Generations(es, settings)
    real_live_index = Generations.live_index
    stale = {"item": f"{settings.item_alias}-20260101-000001", "user": f"{settings.user_alias}-20260101-000001"}
    before = live(es, settings)
    try:
        Generations.live_index = lambda self, family: stale[family]  # a view read before someone else's swap
        from elasticsearch import ApiError, NotFoundError
        with pytest.raises((ApiError, NotFoundError)):
            gens.swap({"item": f"{settings.item_alias}-20260101-000001", "user": f"{settings.user_alias}-20260101-000001"})
    finally:
        Generations.live_index = real_live_index
    assert live(es, settings) == before
    for alias in (settings.item_alias, settings.user_alias):
        assert len(es.indices.get_alias(name=alias)) == 1


# ---- the lock: a lease, a heartbeat, fencing, no pids ---------------------------------------------

def test_a_live_lease_is_never_taken_over_because_its_pid_looks_dead(es, settings):
    """Before: a lock held by a pid that does not exist on this host was taken over at once, which
    is wrong for a holder in another container with the same hostname."""
    import socket

    from ingest.indexing.lock import LOCK_INDEX

    name = f"reindex-{settings.item_alias}"
    ReindexLock(es, name=name)._ensure_index()
    now = time.time()
    es.index(index=LOCK_INDEX, id=name, refresh="true",
             document={"token": "other", "host": socket.gethostname(), "pid": 2 ** 22 + 7, "acquired_at": now,
                       "renewed_at": now, "expires_at": now + 30})
    try:
        with pytest.raises(LockHeld, match="another re-index holds the lock"):
            ReindexLock(es, name=name, lease_s=LEASE_S).acquire()
        es.update(index=LOCK_INDEX, id=name, doc={"expires_at": time.time() - 1}, refresh="true")
        lock = ReindexLock(es, name=name, lease_s=LEASE_S).acquire()  # expired: taken over
        lock.release()
    finally:
        es.options(ignore_status=404).delete(index=LOCK_INDEX, id=name, refresh="true")


def test_the_heartbeat_keeps_a_lease_alive_past_its_length_and_a_stalled_holder_is_fenced_off(es, settings):
    name = f"reindex-{settings.item_alias}"
    first = ReindexLock(es, name=name, lease_s=1.5).acquire()
    try:
        time.sleep(3.5)  # more than two leases: the heartbeat renewed it
        with pytest.raises(LockHeld):
            ReindexLock(es, name=name, lease_s=1.5).acquire()
        first.fence("still mine")

        first.pause_heartbeat()  # a stalled holder (GC pause, SIGSTOP, a hung call)
        time.sleep(1.8)
        second = ReindexLock(es, name=name, lease_s=1.5).acquire()
        from ingest.indexing.lock import LockLost
        with pytest.raises(LockLost):
            first.check("load")
        with pytest.raises(LockLost):
            first.fence("swap")
        second.fence("swap")  # the new holder is unaffected
        second.release()
    finally:
        first.release()
    # the stalled holder's release did not delete anyone else's lock, and the lock is free now
    ReindexLock(es, name=name, lease_s=1.5).acquire().release()


STALLED_PUBLISHER = textwrap.dedent("""
    import sys
    from facetrec.catalog.rows import RowCatalog
    from facetrec.settings import Settings
    from facetrec.es import make_client
    from ingest.indexing.reindex import run_reindex
    from ingest.embedding.synthetic import embedding_records

    settings = Settings.from_env().replace(item_alias=sys.argv[1], user_alias=sys.argv[2], index_type="flat")
    items, users, _, _ = embedding_records(n_items=1500, n_users=200, dims=64, seed=3)
    run_reindex(make_client(settings, request_timeout=30), settings, RowCatalog.load(sys.argv[3]),
                items=items, users=users, model_version="test-model", generation=sys.argv[4], progress=False)
""")


def test_a_run_stalled_past_its_lease_is_fenced_off_and_changes_nothing_when_it_resumes(
        es, es_settings, settings, catalog, small_data, tmp_path):
    """Before: a run that outlived its lock was taken over, and on resuming still reached the swap
    (and its cleanup deleted the new holder's indices). Now it stops at its next fence."""
    publish(es, settings, catalog, small_data, "20260101-000001")
    script = tmp_path / "stalled.py"
    script.write_text(STALLED_PUBLISHER)
    env = {**os.environ, "ES_URL": es_settings.es_url, "FACETREC_LOCK_LEASE_S": "2"}
    proc = subprocess.Popen([sys.executable, "-u", str(script), settings.item_alias, settings.user_alias,
                             os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"), "20260101-000002"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "] validate " in line:
                break
        else:
            pytest.fail(f"the publisher never reached validation (exit {proc.wait()})")
        proc.send_signal(signal.SIGSTOP)
        time.sleep(2.5)  # its lease runs out while it is stopped
        taken_over = publish_when_free(es, settings.replace(lock_lease_s=2.0), catalog, small_data, "20260101-000003")
        assert taken_over["status"] == "swapped"
        after_takeover = live(es, settings)
        proc.send_signal(signal.SIGCONT)
        rest = proc.stderr.read()
        assert proc.wait(60) != 0
    finally:
        proc.kill()
    assert re.search(r"lease on the lock .* ran out|lock document changed hands", rest), rest
    assert "] swap aliases" not in rest and "] retention" not in rest, rest
    assert live(es, settings) == after_takeover == tuple(_gen_indices(settings, "20260101-000003"))
    assert es.count(index=settings.item_alias)["count"] == len(small_data[0])
    assert es.count(index=settings.user_alias)["count"] == len(small_data[1])


# ---- serving never mixes models ------------------------------------------------------------------

def test_a_page_whose_user_vector_and_items_belong_to_different_pairs_is_refused_with_503(
        es, settings, catalog):
    """Before: the user vector's generation was never compared with the items'; a mixed page was
    served with 200. Now it is re-read, and refused (503 + Retry-After, counted) if still mixed."""
    import socket

    from app import create_app

    m1, m2 = _model_data(41), _model_data(42)
    run_reindex(es, settings, catalog, items=m1[0], users=m1[1], model_version="m1", generation="20260101-000001",
                progress=False, sample_users=5)
    run_reindex(es, settings, catalog, items=m2[0], users=m2[1], model_version="m2", generation="20260101-000002",
                progress=False, sample_users=5)
    user_id = m1[1][3]["user_id"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        app = create_app(settings.replace(es_request_timeout_s=5.0, statsd_host="127.0.0.1",
                                          statsd_port=listener.getsockname()[1]), catalog)
        client = app.test_client()
        ok = client.get(f"/v1/users/{user_id}/homepage")
        assert ok.status_code == 200
        assert ok.json["generation"] == ok.json["user_generation"] == "20260101-000002"

        # Someone moves the user alias alone (a hand-made change, or half of a swap): m1 user vectors
        # beside m2 items.
        es.indices.update_aliases(actions=[
            {"remove": {"index": f"{settings.user_alias}-20260101-000002", "alias": settings.user_alias}},
            {"add": {"index": f"{settings.user_alias}-20260101-000001", "alias": settings.user_alias}}])
        refused = client.get(f"/v1/users/{user_id}/homepage")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json["error"]["code"] == "generation_swap"
        seen = b""
        deadline = time.monotonic() + 5
        while b"mixed_generation_refused" not in seen and time.monotonic() < deadline:
            seen += listener.recv(65536) + b"\n"
    assert seen.count(b"homepage.mixed_generation_retry") >= 3 and b"homepage.mixed_generation_refused" in seen


@pytest.mark.parametrize("heuristic", ["acorn", "fanout"])
def test_graph_indices_get_the_configured_filter_heuristic_and_templates_stay_idempotent(es, settings, heuristic):
    """FACETREC_HNSW_FILTER_HEURISTIC reaches new graph generations (how Lucene walks the graph under
    a row's filter); a second apply of the same templates writes nothing."""
    settings = settings.replace(index_type="hnsw", hnsw_filter_heuristic=heuristic)
    assert templates.apply(es, settings, "m1")
    assert templates.apply(es, settings, "m1") == []
    index = Generations(es, settings).create("item", "20260101-000000", "m1")
    got = es.indices.get_settings(index=index, name="index.dense_vector.hnsw_filter_heuristic")
    assert got[index]["settings"]["index"]["dense_vector"]["hnsw_filter_heuristic"] == heuristic
