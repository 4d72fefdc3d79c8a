"""Index generations against the real node: templates, load, validation gate, atomic swap,
retention, rollback, crash safety, the lock, and reads that never see a mix of generations."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from facetrec.homepage import Target, recommend
from facetrec.rows import RowCatalog
from ingest.indexing import templates
from ingest.indexing.generations import Generations
from ingest.indexing.lock import LockHeld, ReindexLock
from ingest.indexing.reindex import run_reindex
from ingest.embedding.synthetic import embedding_records
from ingest.indexing.validate import ValidationFailed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_data():
    items, users, _, _ = embedding_records(n_items=1500, n_users=200, dims=64, seed=3)
    return items, users


@pytest.fixture
def settings(es_settings, unique):
    return es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                               index_type="flat")


@pytest.fixture(scope="module")
def catalog():
    return RowCatalog.load(os.path.join(REPO, "app", "rows.yaml"))


def publish(es, settings, catalog, data, generation, **kwargs):
    items, users = data
    return run_reindex(es, settings, catalog, items=items, users=users, model_version="test-model",
                       generation=generation, progress=False, sample_users=5, **kwargs)


def live(es, settings):
    gens = Generations(es, settings)
    return gens.live_index("item"), gens.live_index("user")


def test_templates_apply_twice_without_change_and_shape_new_generations(es, settings):
    assert sorted(templates.apply(es, settings, "m1")) == sorted(templates.template_name(settings, f)
                                                                 for f in ("item", "user"))
    before = es.indices.get_index_template(name=templates.template_name(settings, "item"))
    assert templates.apply(es, settings, "m1") == []
    assert es.indices.get_index_template(name=templates.template_name(settings, "item")) == before

    index = Generations(es, settings).create("item", "20260101-000000", "m1")
    props = es.indices.get_mapping(index=index)[index]["mappings"]["properties"]
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

    def swap_then_time_out(self, targets):
        real_swap(self, targets)
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

    def time_out(self, targets):
        raise ConnectionTimeout("simulated: _aliases timed out and was not applied")

    monkeypatch.setattr(Generations, "swap", time_out)
    with pytest.raises(ConnectionTimeout):
        publish(es, settings, catalog, small_data, "20260101-000002")
    assert live(es, settings) == before
    assert not any(es.indices.exists(index=i) for i in _gen_indices(settings, "20260101-000002"))


def test_a_signal_right_after_the_swap_never_deletes_the_live_indices(es, settings, catalog, small_data, monkeypatch):
    publish(es, settings, catalog, small_data, "20260101-000001")
    real_swap = Generations.swap

    def swap_then_interrupt(self, targets):
        real_swap(self, targets)
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
    return Target(item_index=settings.item_alias, user_index=settings.user_alias, similarity=settings.similarity,
                  request_timeout_s=10)


KILLED_LOADER = textwrap.dedent("""
    import sys, time
    from facetrec.rows import RowCatalog
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
    env = {**os.environ, "ES_URL": es_settings.es_url}
    proc = subprocess.Popen([sys.executable, str(script), settings.item_alias, settings.user_alias,
                             os.path.join(REPO, "app", "rows.yaml")], env=env)
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
    # The dead run's lock and partial generation do not block the next run.
    result = publish(es, settings, catalog, small_data, "20260101-000003")
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
        "facets": {"item_format": "keyword"},
        "rows": [{"id": "for_you", "title": "For you"},
                 {"id": "vinyl", "title": "Vinyl", "filter": [{"term": {"item_format": "vinyl"}}]}]})
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
    from ingest.indexing.bulk_load import spark_load
    from ingest.indexing.generations import Generations

    items, _ = small_data
    rows = [{**r, "item_embed": [float(x) for x in r["item_embed"]]} for r in items]
    df = spark.createDataFrame(rows).repartition(4)
    templates.apply(es, settings, "m1")
    index = Generations(es, settings).create("item", "20260101-000001", "m1")
    report = spark_load(df, es_url=settings.es_url, index=index, kind="item", generation="20260101-000001",
                        dims=64)
    es.indices.refresh(index=index)
    assert report.indexed == len(items) and report.invalid_count == 0 and report.failed_count == 0
    assert es.count(index=index)["count"] == len(items)
    doc = es.get(index=index, id="i42", source_exclude_vectors=False)["_source"]  # 9.x leaves vectors out by default
    assert doc["categories"] == items[42]["categories"] and len(doc["item_embed"]) == 64


def test_spark_executors_get_the_same_auth_options_as_the_driver(es_settings):
    from facetrec.es import client_options

    assert client_options(es_settings.replace(es_api_key="k1", es_ca_cert="/ca.pem")) == {"api_key": "k1",
                                                                                       "ca_certs": "/ca.pem"}
    assert client_options(es_settings.replace(es_username="u", es_password="p")) == {"basic_auth": ("u", "p")}
    assert client_options(es_settings.replace(es_api_key=None, es_username=None, es_ca_cert=None)) == {}
