"""Vector partitions and the row planner: pure logic first (partition fields, counts, plans, the
shared search of a page), then end to end on the real node (every plan against numpy's exact top)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from catalogs import bundled_schema, schema_of
from facetrec.catalog import partitions
from facetrec.catalog.counts import GenerationStats
from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD
from facetrec.catalog.rows import Row, RowCatalog, RowConfigError
from facetrec.serving.homepage import SearchConfig, UserVector
from facetrec.serving.page_search import build_page_search
from facetrec.serving.planner import Thresholds, overfetch, plan_row, walk_size
from facetrec.settings import Settings, SettingsError
from ingest.indexing.records import facet_value_counts

USER_FILTERS = [{"term": {"language": "en"}}]
PARTS = {"item_format": {"audiobook": {"field": partitions.partition_field("item_format", "audiobook"), "docs": 3000},
                         "podcast": {"field": partitions.partition_field("item_format", "podcast"), "docs": 800}}}


def _row(row_id: str, *clauses: dict, must_not: tuple = (), plan: str | None = None) -> Row:
    return Row(id=row_id, title=row_id, filter=tuple(clauses), must_not=must_not, plan=plan)


ROWS = {
    "for_you": _row("for_you"),
    "audiobooks": _row("audiobooks", {"term": {"item_format": "audiobook"}}),
    "podcasts": _row("podcasts", {"term": {"item_format": "podcast"}}),
    "new": _row("new", {"range": {"published_at": {"gte": "2020-01-01"}}}),
    "rare": _row("rare", {"term": {"categories": "horror"}}),
}


def _stats(**changes) -> GenerationStats:
    def counted(row: Row, docs: int, en: int) -> dict:
        return {"filter": [list(row.filter), list(row.must_not)], "docs": docs, "by": {"language": {"en": en, "es": docs - en}}}
    fields = dict(index="items-g", generation="g", docs=10_000, partitions=PARTS, exact_vectors=True, index_type="hnsw",
                  rows={"for_you": counted(ROWS["for_you"], 10_000, 6_000),
                        "audiobooks": counted(ROWS["audiobooks"], 3_000, 1_800),
                        "podcasts": counted(ROWS["podcasts"], 800, 480),
                        "new": counted(ROWS["new"], 2_000, 1_200),
                        "rare": counted(ROWS["rare"], 400, 100)})
    return GenerationStats(**{**fields, **changes})


def test_partition_fields_are_valid_distinct_names_for_any_value():
    names = {partitions.partition_field("categories", v) for v in ("Sci-Fi", "sci fi", "sci.fi", "日本語", "", "a" * 300)}
    assert len(names) == 6
    assert all(n.startswith("item_embed_by__categories__") and "." not in n and len(n) < 100 for n in names)
    assert partitions.partition_field("item_format", "audiobook") == partitions.partition_field("item_format", "audiobook")


def test_values_below_the_minimum_get_no_partition_and_too_many_values_are_refused():
    chosen = partitions.choose(["item_format", "missing"], {"item_format": Counter(ebook=50, podcast=3)}, min_docs=10)
    assert list(chosen["item_format"]) == ["ebook"] and chosen["item_format"]["ebook"]["docs"] == 50
    assert chosen["missing"] == {}
    many = {"tag": Counter({f"t{i}": 10 for i in range(partitions.MAX_VALUES_PER_FACET + 1)})}
    with pytest.raises(partitions.PartitionError, match="tag.*65 values"):
        partitions.choose(["tag"], many, min_docs=10)


def test_an_item_goes_into_the_partition_of_each_partitioned_value_it_has():
    parts = partitions.choose(["categories", "item_format"],
                              {"categories": Counter(comedy=5, horror=5), "item_format": Counter(ebook=5)}, 1)
    fields = partitions.document_fields({"categories": ["comedy", "horror", "comedy"], "item_format": "ebook"}, parts)
    assert sorted(fields) == sorted([parts["categories"]["comedy"]["field"], parts["categories"]["horror"]["field"],
                                     parts["item_format"]["ebook"]["field"]])
    assert partitions.document_fields({"categories": ["drama"]}, parts) == []


def test_facet_values_are_counted_from_records_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingest.indexing.records import parquet_records

    records = [{"item_format": "ebook", "categories": ["a", "b", "a"]}, {"item_format": "podcast", "categories": ["a"]},
               {"item_format": None}]
    counts = facet_value_counts(records, ["item_format", "categories"])
    assert counts == {"item_format": Counter(ebook=1, podcast=1), "categories": Counter(a=2, b=1)}
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "items.parquet")
    assert facet_value_counts(parquet_records(tmp_path / "items.parquet"), ["item_format", "categories", "absent"]) == \
        {**counts, "absent": Counter()}
    with pytest.raises(TypeError, match="twice"):
        facet_value_counts(iter(records), ["item_format"])


def test_the_estimate_scales_a_rows_count_by_its_user_filter_shares():
    stats = _stats()
    assert stats.estimate(ROWS["audiobooks"], USER_FILTERS) == 1_800
    assert stats.estimate(ROWS["audiobooks"], []) == 3_000
    assert stats.estimate(ROWS["audiobooks"], [{"terms": {"language": ["en", "es"]}}]) == 3_000
    assert stats.estimate(ROWS["audiobooks"], [{"term": {"language": "fr"}}]) == 0
    changed = _row("audiobooks", {"term": {"item_format": "ebook"}})     # same id, another filter: not counted
    assert stats.estimate(changed, USER_FILTERS) is None
    # A user filter the counts do not know (added to the config since the publish): no estimate,
    # rather than a guess that it keeps every item.
    assert stats.estimate(ROWS["audiobooks"], [*USER_FILTERS, {"term": {"country": "LU"}}]) is None


@pytest.mark.parametrize("row_id, kind, field", [
    ("for_you", "post_filter", ITEM_VECTOR_FIELD),          # 60% of the catalog: walk, then filter
    ("audiobooks", "partition", PARTS["item_format"]["audiobook"]["field"]),
    ("podcasts", "exact", EXACT_VECTOR_FIELD),              # 480 estimated matches: scan them
    ("new", "post_filter", ITEM_VECTOR_FIELD),              # 12% of the catalog
    ("rare", "exact", EXACT_VECTOR_FIELD),
])
def test_the_planner_picks_a_plan_from_the_estimate_and_the_pair(row_id, kind, field):
    plan = plan_row(ROWS[row_id], USER_FILTERS, _stats(), Thresholds(exact_max_matches=500, post_filter_min_share=0.1))
    assert (plan.kind, plan.field) == (kind, field)


def test_a_partition_walk_filters_after_when_the_rest_keeps_a_large_share_and_inside_otherwise():
    audiobooks = ROWS["audiobooks"]
    after = plan_row(audiobooks, USER_FILTERS, _stats(), Thresholds(exact_max_matches=0, post_filter_min_share=0.5))
    assert after.shared and after.post == () and after.share == pytest.approx(0.6)
    inside = plan_row(audiobooks, USER_FILTERS, _stats(), Thresholds(exact_max_matches=0, post_filter_min_share=0.7))
    assert not inside.shared and inside.pre == ()          # the pinned value is the partition itself


def test_selective_rows_without_a_partition_walk_the_filtered_graph_and_pins_fall_back_when_impossible():
    thresholds = Thresholds(exact_max_matches=0, post_filter_min_share=0.5)
    assert plan_row(ROWS["new"], USER_FILTERS, _stats(), thresholds).kind == "filtered_graph"
    no_copy = _stats(exact_vectors=False)
    assert plan_row(ROWS["rare"], USER_FILTERS, no_copy, Thresholds(exact_max_matches=500)).kind == "filtered_graph"
    pinned = _row("for_you", plan="partition")
    assert plan_row(pinned, USER_FILTERS, _stats(), thresholds).kind == "filtered_graph"   # no value to partition on
    pinned_exact = _row("audiobooks", {"term": {"item_format": "audiobook"}}, plan="exact")
    assert plan_row(pinned_exact, USER_FILTERS, _stats(), thresholds).kind == "exact"
    assert plan_row(ROWS["for_you"], USER_FILTERS, _stats(index_type="flat"), thresholds).field == ITEM_VECTOR_FIELD


def test_overfetch_asks_for_enough_walk_results_for_a_filter_to_keep_k():
    assert overfetch(10, None) == 10 and overfetch(10, 1.0) == 10
    assert overfetch(10, 0.4) == 50          # Elasticsearch's oversampling formula: ~ (k + 2.5 sqrt(k(1-p)/p)) / p
    rng = np.random.default_rng(0)
    for k, share in ((10, 0.4), (30, 0.13), (60, 0.1)):
        kept = rng.binomial(overfetch(k, share), share, size=20_000)
        assert (kept >= k).mean() > 0.99
    assert overfetch(100, 1e-6) == 10_000


def test_a_walk_is_sized_for_the_seen_items_that_pass_the_filter_not_for_all_of_them():
    """Seen items are removed after the walk; one displaces a result only when it passes the row's
    filter too. Simulated: a walk of walk_size results, seen items scattered in it passing at the
    row's share, still leaves the row's size for nearly every user, with far fewer results walked."""
    assert walk_size(10, 0, 0.13) == overfetch(10, 0.13) and walk_size(10, 5, None) == 15
    assert walk_size(10, 100, 0.13) < overfetch(110, 0.13) / 2
    rng = np.random.default_rng(1)
    for shown, seen, share in ((10, 100, 0.13), (10, 40, 0.4), (20, 200, 0.1)):
        walked = walk_size(shown, seen, share)
        passing = rng.binomial(walked, share, size=20_000)
        seen_passing = rng.binomial(seen, share, size=20_000)   # every seen item inside the walk: the worst case
        assert ((passing - seen_passing) >= shown).mean() > 0.98, (shown, seen, share)


def test_a_homepage_larger_than_a_request_may_ask_is_refused_at_load():
    rows = [{"id": f"r{i}", "size": 50} for i in range(5)]
    with pytest.raises(RowConfigError, match="250 items.*at most 200"):
        RowCatalog.from_dict({"rows": rows})
    assert RowCatalog.from_dict({"rows": rows, "homepage": ["r0", "r1", "r2", "r3"]}).homepage == ("r0", "r1", "r2", "r3")


def test_row_config_pins_a_plan():
    catalog = RowCatalog.from_dict({"rows": [
        {"id": "a", "plan": "post_filter"}, {"id": "b", "exact": True}, {"id": "c"}]}, schema_of({"f": "keyword"}))
    assert [r.plan for r in catalog.rows.values()] == ["post_filter", "exact", None]
    for bad in ({"id": "x", "plan": "fast"}, {"id": "x", "plan": "partition", "exact": True}):
        with pytest.raises(RowConfigError):
            RowCatalog.from_dict({"rows": [bad]})


@pytest.mark.parametrize("env, message", [
    ({"FACETREC_POST_FILTER_MIN_SHARE": "0"}, "FACETREC_POST_FILTER_MIN_SHARE"),
    ({"FACETREC_WALK_CANDIDATES": "20000"}, "FACETREC_WALK_CANDIDATES"),
    ({"FACETREC_VECTOR_PARTITIONS": "item format"}, "FACETREC_VECTOR_PARTITIONS"),
    ({"FACETREC_PARTITION_MIN_DOCS": "0"}, "FACETREC_PARTITION_MIN_DOCS"),
])
def test_bad_planner_settings_fail_naming_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_post_filtered_rows_share_one_search_with_a_bucket_each():
    target = SearchConfig(item_index="items", user_index="users", similarity="max_inner_product",
                    thresholds=Thresholds(exact_max_matches=500, post_filter_min_share=0.1, walk_candidates=300,
                                          partition_candidates=200))
    user = UserVector("u", [1.0, 0.0], ["i1", "i2"], "g", "g", item_vector_scale=2.0, item_exact_vectors=True)
    rows = [ROWS["for_you"], ROWS["audiobooks"], ROWS["podcasts"], ROWS["new"]]
    page = build_page_search(rows, user, USER_FILTERS, target, stats=_stats())
    assert [r.plan for r in page.rows] == ["post_filter", "partition", "exact", "post_filter"]
    assert len(page.lines) == 4   # the exact row alone, then the shared search: two searches for four rows
    exact_body, shared = page.lines[1], page.lines[3]
    assert exact_body["query"]["bool"]["must"][0]["knn"]["field"] == EXACT_VECTOR_FIELD
    walks = {q["knn"]["field"]: q["knn"] for q in shared["query"]["bool"]["must"][0]["dis_max"]["queries"]}
    assert set(walks) == {ITEM_VECTOR_FIELD, PARTS["item_format"]["audiobook"]["field"]}
    assert all("filter" not in knn for knn in walks.values())          # the walks are unfiltered...
    assert shared["query"]["bool"]["filter"] == USER_FILTERS            # ...the user filters come after them
    assert shared["query"]["bool"]["must_not"] == [{"ids": {"values": ["i1", "i2"]}}]
    # The whole graph walk serves for_you (60%) and new (12%): enough results for the sparser one to
    # fill its size once the user's 2 seen items are gone (each passes its filter at about its share).
    assert walks[ITEM_VECTOR_FIELD]["k"] == walk_size(10, 2, 0.12) == overfetch(10 + 1, 0.12)
    assert walks[ITEM_VECTOR_FIELD]["num_candidates"] >= walks[ITEM_VECTOR_FIELD]["k"]
    # One bucket per row, each holding (and fetching) its own row's k: over-fetched for the backfill
    # after de-duplication by the sizes of the rows before it (for_you 10; new 10 + 30).
    assert {name: agg["aggs"]["top"]["top_hits"]["size"] for name, agg in shared["aggs"].items()} == \
        {"b0": 10, "b1": 20, "b3": 40}
    buckets = {name: agg["filter"] for name, agg in shared["aggs"].items()}
    assert buckets == {"b0": {"bool": {"filter": [], "must_not": []}},
                       "b1": {"bool": {"filter": [{"term": {"item_format": "audiobook"}}], "must_not": []}},
                       "b3": {"bool": {"filter": [{"range": {"published_at": {"gte": "2020-01-01"}}}], "must_not": []}}}
    hit = {"_id": "x", "_index": "items", "_score": 0.9, "_source": {"generation": "g"}}
    responses = [{"took": 3, "hits": {"hits": [hit]}},
                 {"took": 7, "timed_out": False, "aggregations": {
                     "b0": {"top": {"hits": {"hits": [hit] * 50}}}, "b1": {"top": {"hits": {"hits": []}}},
                     "b3": {"top": {"hits": {"hits": [hit]}}}}}]
    split = page.split(responses)
    assert [len(r["hits"]["hits"]) for r in split] == [10, 0, 1, 1]     # a bucket is cut to its row's k
    assert split[0]["took"] == 7 and split[2] == responses[0]
    failed = page.split([responses[0], {"error": {"reason": "boom"}, "status": 500}])
    assert "error" in failed[0] and "error" in failed[3] and "error" not in failed[2]
    # Quantized graphs: the shared walks rescore their best with the float vectors, as a row's own walk does.
    import dataclasses as dc
    quantized = build_page_search(rows, user, USER_FILTERS, dc.replace(target, rescore_oversample=3.0), stats=_stats())
    shared_walks = quantized.lines[3]["query"]["bool"]["must"][0]["dis_max"]["queries"]
    assert all(q["knn"]["rescore_vector"] == {"oversample": 3.0} for q in shared_walks)


def test_without_stats_rows_are_asked_as_before_the_planner():
    target = SearchConfig(item_index="items", user_index="users", similarity="max_inner_product")
    user = UserVector("u", [1.0, 0.0], [], "g", "g", item_vector_scale=2.0, item_exact_vectors=True)
    page = build_page_search([ROWS["for_you"], _row("p", plan="exact")], user, [], target)
    assert [r.plan for r in page.rows] == ["filtered_graph", "exact"]
    assert [line["query"]["knn"]["field"] for line in page.lines[1::2]] == [ITEM_VECTOR_FIELD, EXACT_VECTOR_FIELD]


# --------------------------------------------------------------------------------------------
# End to end on the real node
# --------------------------------------------------------------------------------------------

E2E_ROWS = {
    "rows": [{"id": "for_you"},
             {"id": "audiobooks", "filter": [{"term": {"item_format": "audiobook"}}]},
             {"id": "ebooks", "filter": [{"term": {"item_format": "ebook"}}]},
             {"id": "podcasts", "filter": [{"term": {"item_format": "podcast"}}]},
             {"id": "comedy", "filter": [{"term": {"categories": "comedy"}}],
              "must_not": [{"term": {"item_format": "document"}}]},
             {"id": "new_releases", "filter": [{"range": {"published_at": {"gte": "2015-01-01"}}}]}],
}
E2E_FILTERS = [{"term": {"language": "en"}}, {"term": {"country": "US"}}]


def _predicates():
    from datetime import date
    return {"for_you": lambda r: True, "audiobooks": lambda r: r["item_format"] == "audiobook",
            "ebooks": lambda r: r["item_format"] == "ebook", "podcasts": lambda r: r["item_format"] == "podcast",
            "comedy": lambda r: "comedy" in r["categories"] and r["item_format"] != "document",
            "new_releases": lambda r: date.fromisoformat(r["published_at"]) >= date(2015, 1, 1)}


@pytest.fixture(scope="module")
def layouts(es, es_settings):
    """One small catalog published as two pairs of aliases: ``graph``, a catalog graph beside the
    item_format partitions (values of 300+ items), whose previous pair has no partitions at all;
    ``partitions``, the partitions alone (they cover the catalog: item_embed is flat); ``sharded``, the
    ``graph`` layout in 3 shards (each shard walks its own graphs and the top k of each are merged:
    exact rows must still be the exact top, the walks meet the same floor)."""
    import uuid

    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    prefix = f"plan-{uuid.uuid4().hex[:8]}"
    items, users, item_vectors, _ = embedding_records(n_items=6000, n_users=30, dims=64, seed=23)
    catalog = RowCatalog.from_dict(E2E_ROWS, bundled_schema("synthetic"))
    out = {}
    for layout, catalog_graph, shards in (("graph", "on", 1), ("partitions", "auto", 1), ("sharded", "on", 3)):
        settings = es_settings.replace(item_alias=f"{prefix}-{layout}-item_index", user_alias=f"{prefix}-{layout}-user_index",
                                       index_type="hnsw", vector_partitions="item_format", partition_min_docs=300,
                                       walk_candidates=150, partition_candidates=100, exact_max_matches=150,
                                       catalog_graph=catalog_graph, shards=shards)
        if layout == "graph":
            run_reindex(es, settings.replace(vector_partitions="none"), catalog, items=items, users=users, model_version="m",
                        generation="20260101-000001", progress=False, sample_users=3)
        run_reindex(es, settings, catalog, items=items, users=users, model_version="m", generation="20260101-000002",
                    progress=False, sample_users=3)
        out[layout] = (settings, catalog, items, users, np.asarray(item_vectors, np.float64))
    yield out
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


def _exact_top(row_id, items, item_vectors, user, size=10, taken=()):
    keep = _predicates()[row_id]
    q = np.asarray(user["user_embed"], np.float64)
    seen = set(user["seen_item_ids"]) | set(taken)
    order = np.argsort(-(item_vectors @ q), kind="stable")
    return [items[j]["item_id"] for j in order
            if items[j]["language"] == "en" and "US" in items[j]["country"] and keep(items[j])
            and items[j]["item_id"] not in seen][:size]


@pytest.mark.parametrize("layout", ["graph", "partitions"])
def test_partitions_hold_only_their_values_items_and_the_pair_records_what_the_planner_needs(es, layouts, layout):
    settings, catalog, items, *_ = layouts[layout]
    live = es.indices.get_alias(name=settings.item_alias)
    (index,) = live
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]
    meta = mapping["_meta"]
    vector_type = mapping["properties"][ITEM_VECTOR_FIELD]["index_options"]["type"]
    copies = es.count(index=index, query={"exists": {"field": EXACT_VECTOR_FIELD}})["count"]
    if layout == "graph":
        assert vector_type == "hnsw" and copies == len(items) and "covering" not in meta
    else:   # the partitions hold every item once: no catalog graph, and item_embed is the exact copy
        assert vector_type == "flat" and copies == 0 and meta["covering"] == "item_format"
    formats = Counter(r["item_format"] for r in items)
    assert set(meta["partitions"]["item_format"]) == {f for f, n in formats.items() if n >= 300}
    for value, entry in meta["partitions"]["item_format"].items():
        assert entry["docs"] == formats[value]
        assert es.count(index=index, query={"exists": {"field": entry["field"]}})["count"] == formats[value]
        assert es.count(index=index, query={"bool": {"filter": [{"exists": {"field": entry["field"]}}],
                                                     "must_not": [{"term": {"item_format": value}}]}})["count"] == 0
    counted = meta["row_stats"]["rows"]
    assert meta["row_stats"]["docs"] == len(items)
    assert counted["podcasts"]["docs"] == formats["podcast"]
    assert counted["for_you"]["by"]["language"]["en"] == sum(r["language"] == "en" for r in items)


@pytest.mark.parametrize("layout", ["graph", "partitions", "sharded"])
@pytest.mark.parametrize("pin", ["exact", "partition", "post_filter", "filtered_graph", None])
def test_every_plan_serves_the_exact_top_or_meets_the_recall_floor(es, layouts, layout, pin):
    """Each plan pinned on every row (None: the planner's own choice), asked through the service's
    code on the live pair: exact rows are numpy's exact top in order; the others find at least
    90% of it (a small catalog, small candidate lists)."""
    import dataclasses as dc

    from facetrec.catalog.counts import StatsCache
    from facetrec.serving.homepage import recommend

    settings, catalog, items, users, item_vectors = layouts[layout]
    if layout == "sharded":
        (index,) = es.indices.get_alias(name=settings.item_alias)
        assert es.indices.get_settings(index=index)[index]["settings"]["index"]["number_of_shards"] == "3"
    rows = [dc.replace(r, plan=pin) for r in catalog.homepage_rows()]
    target = SearchConfig.from_settings(settings, request_timeout_s=30.0, dedupe_across_rows=False,
                                  stats=StatsCache(rows, catalog.user_filters))
    found = Counter()
    wanted = Counter()
    for user in users:
        page = recommend(es, target, user["user_id"], rows, E2E_FILTERS)
        for row in page["rows"]:
            assert "error" not in row, row
            truth = _exact_top(row["id"], items, item_vectors, user)
            got = [i["id"] for i in row["items"]]
            if row["plan"] == "exact":
                assert got == truth, (row["id"], user["user_id"])
            found[row["plan"]] += len(set(got) & set(truth))
            wanted[row["plan"]] += len(truth)
            if pin == "partition" and row["id"] in ("audiobooks", "ebooks", "podcasts"):
                assert row["plan"] == "partition"
            elif pin is not None and pin != "partition":
                assert row["plan"] == pin
    for plan, n in wanted.items():
        assert found[plan] / n >= 0.9, (plan, found[plan] / n)
    print({plan: round(found[plan] / n, 3) for plan, n in wanted.items()})


def test_the_service_names_each_rows_plan_and_serves_a_rollback_to_a_pair_without_partitions(es, layouts):
    from app import create_app
    from ingest.indexing.generations import Generations

    settings, catalog, items, users, item_vectors = layouts["graph"]
    client = create_app(settings.replace(es_request_timeout_s=10.0), catalog).test_client()
    user = users[0]
    page = client.get(f"/v1/users/{user['user_id']}/homepage?language=en&country=US").json
    plans = {row["id"]: row["plan"] for row in page["rows"]}
    assert plans["audiobooks"] == plans["ebooks"] == "partition" and set(plans.values()) <= set(("exact", "partition",
                                                                                               "post_filter", "filtered_graph"))
    assert all(row["items"] for row in page["rows"])
    gens = Generations(es, settings)
    gens.rollback()
    try:
        page = client.get(f"/v1/users/{user['user_id']}/homepage?language=en&country=US").json
        assert page["generation"] == "20260101-000001"
        assert "partition" not in {row["plan"] for row in page["rows"]}
        assert all(row["items"] and "error" not in row for row in page["rows"])
    finally:   # back to the pair with partitions for the other tests of this module
        live = gens.live_pair()
        gens.swap({"item": f"{settings.item_alias}-20260101-000002", "user": f"{settings.user_alias}-20260101-000002"})
        gens.mark(f"{settings.user_alias}-20260101-000002", "validated")
        assert live is not None


def test_rows_a_generation_did_not_count_are_counted_once_in_the_background_and_planned_meanwhile(es, layouts):
    """A pair published without row counts (before the planner, or before a row-config change):
    its first page is planned without estimates at once (no count inside the request), one count
    runs however many threads ask, and later pages plan from it. An index that cannot be read
    gives no stats (the rows' own searches report it), not an error."""
    import threading

    from facetrec.catalog import counts as catalog_stats
    from facetrec.catalog.counts import StatsCache

    settings, catalog, *_ = layouts["graph"]
    old = f"{settings.item_alias}-20260101-000001"
    meta = es.indices.get_mapping(index=old)[old]["mappings"]["_meta"]
    es.indices.put_mapping(index=old, meta={k: v for k, v in meta.items() if k not in ("row_stats", "index_type")})
    calls = []
    real = catalog_stats.count_rows
    release = threading.Event()

    def slow_count(*args, **kwargs):
        calls.append(args[1])
        release.wait(10)
        return real(*args, **kwargs)

    try:
        catalog_stats.count_rows = slow_count
        cache = StatsCache(list(catalog.rows.values()), catalog.user_filters)
        got = []
        threads = [threading.Thread(target=lambda: got.append(cache.get(es, old, "20260101-000001", 5.0)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(got) == 8 and all(g is not None and g.rows == {} for g in got)   # served before the count
        assert got[0].index_type == "hnsw"                                            # read from the mapping
        assert got[0].estimate(catalog.rows["for_you"], E2E_FILTERS) is None
        release.set()
        cache.settle(30)
        counted = cache.get(es, old, "20260101-000001", 5.0)
        assert calls == [old] and set(counted.rows) == set(catalog.rows)
        assert counted.estimate(catalog.rows["for_you"], []) == counted.docs
    finally:
        catalog_stats.count_rows = real
        release.set()
        es.indices.put_mapping(index=old, meta=meta)
    assert StatsCache([], ()).get(es, f"{settings.item_alias}-no-such-generation", "g", 5.0) is None


def test_a_row_needing_more_hits_than_a_bucket_holds_walks_on_its_own():
    from facetrec.serving.page_search import MAX_SHARED_HITS

    target = SearchConfig(item_index="items", user_index="users", similarity="max_inner_product",
                    thresholds=Thresholds(exact_max_matches=0, post_filter_min_share=0.1))
    user = UserVector("u", [1.0, 0.0], [], "g", "g", item_vector_scale=2.0, item_exact_vectors=True)
    rows = [ROWS["for_you"], ROWS["new"]]
    page = build_page_search(rows, user, USER_FILTERS, target, sizes={"for_you": 100, "new": 10}, stats=_stats())
    assert [r.plan for r in page.rows] == ["post_filter", "filtered_graph"]   # new: k = 10 + 100 > MAX_SHARED_HITS
    assert page.rows[1].k > MAX_SHARED_HITS
    own = page.lines[1]["query"]
    knn = own["knn"] if "knn" in own else own["bool"]["must"][0]["knn"]
    assert knn["filter"]["bool"]["filter"] == [*USER_FILTERS, {"range": {"published_at": {"gte": "2020-01-01"}}}]


def test_a_single_valued_facet_whose_every_value_is_partitioned_covers_the_catalog():
    from ingest.indexing.records import ValueCounts

    counts = {"item_format": ValueCounts(ebook=6, podcast=4, records=10, single=10),
              "categories": ValueCounts(a=8, b=5, records=10, single=7)}
    chosen = partitions.choose(["categories", "item_format"], counts, min_docs=1)
    assert partitions.covering(chosen, counts) == "item_format"          # categories: multi-valued
    assert partitions.covering(partitions.choose(["item_format"], counts, min_docs=5), counts) is None  # podcast: no graph
    missing = {"item_format": ValueCounts(ebook=6, podcast=3, records=10, single=9)}   # an item without a format
    assert partitions.covering(partitions.choose(["item_format"], missing, min_docs=1), missing) is None
    records = [{"item_format": "ebook"}, {"item_format": "podcast"}]
    assert partitions.covering(partitions.choose(["item_format"], facet_value_counts(records, ["item_format"]), 1),
                               facet_value_counts(records, ["item_format"])) == "item_format"


def test_without_a_catalog_graph_rows_that_pin_no_partition_walk_every_partition():
    stats = _stats(covering="item_format", exact_vectors=False,
                   partitions={"item_format": {**PARTS["item_format"],
                                               "ebook": {"field": partitions.partition_field("item_format", "ebook"),
                                                         "docs": 6200}}})
    thresholds = Thresholds(exact_max_matches=500, post_filter_min_share=0.1)
    every = tuple(sorted(e["field"] for e in stats.partitions["item_format"].values()))
    post = plan_row(ROWS["for_you"], USER_FILTERS, stats, thresholds)
    assert post.kind == "post_filter" and sorted(post.fields) == list(every)
    assert plan_row(ROWS["rare"], USER_FILTERS, stats, thresholds).fields == (ITEM_VECTOR_FIELD,)   # flat: exact
    walked = plan_row(ROWS["new"], USER_FILTERS, stats, Thresholds(exact_max_matches=0, post_filter_min_share=0.5))
    assert walked.kind == "filtered_graph" and sorted(walked.fields) == list(every)
    target = SearchConfig(item_index="items", user_index="users", similarity="max_inner_product", thresholds=thresholds)
    user = UserVector("u", [1.0, 0.0], [], "g", "g", item_vector_scale=2.0)
    page = build_page_search([ROWS["new"]], user, USER_FILTERS, target, stats=stats.__class__(
        **{**stats.__dict__, "rows": stats.rows}))
    assert page.rows[0].plan == "post_filter"
    shared = page.lines[1]["query"]["bool"]["must"][0]["dis_max"]["queries"]
    assert sorted(q["knn"]["field"] for q in shared) == list(every)
    own = build_page_search([ROWS["new"]], user, USER_FILTERS,
                            SearchConfig(item_index="items", user_index="users", similarity="max_inner_product",
                                   thresholds=Thresholds(exact_max_matches=0, post_filter_min_share=0.5)), stats=stats)
    body = own.lines[1]["query"]
    queries = (body.get("dis_max") or body["bool"]["must"][0]["dis_max"])["queries"]
    assert sorted(q["knn"]["field"] for q in queries) == list(every)
    assert all(q["knn"]["filter"]["bool"]["filter"] == [*USER_FILTERS, *ROWS["new"].filter] for q in queries)


def test_a_row_that_found_nothing_reads_as_no_hits_whatever_the_response_kept():
    target = SearchConfig(item_index="items", user_index="users", similarity="max_inner_product")
    user = UserVector("u", [1.0, 0.0], [], "g", "g")
    page = build_page_search([ROWS["for_you"], ROWS["new"]], user, [], target)
    split = page.split([{"took": 1}, {"took": 2, "hits": {"hits": [{"_id": "a"}]}}])   # filter_path dropped "hits"
    assert split[0]["hits"]["hits"] == [] and split[1]["hits"]["hits"] == [{"_id": "a"}]


def test_each_row_is_searched_with_the_interest_closest_to_its_items_and_scored_with_it():
    """A user of K interests (the current one first): a row whose items lean another way (its centroid,
    recorded with the generation) is searched with that interest; rows without a centroid and a
    one-vector user use the current one. Post-filtered rows share one search per interest, so the page
    never makes more searches than rows."""
    from facetrec.serving.interests import closest_interest, row_interests

    assert closest_interest([[1.0, 0.0], [0.0, 1.0]], None) == 0
    assert closest_interest([[1.0, 0.0], [0.0, 1.0]], [0.1, 0.9]) == 1
    assert closest_interest([[1.0, 0.0], [1.0, 0.0]], [1.0, 0.0]) == 0      # a tie keeps the current one
    stats = _stats()
    rows = {**stats.rows}
    rows["audiobooks"] = {**rows["audiobooks"], "centroid": [0.0, 1.0]}   # audiobooks lean to interest 1
    rows["new"] = {**rows["new"], "centroid": [0.9, 0.1]}                 # new releases to the current one
    stats = _stats(rows=rows)
    target = SearchConfig(item_index="items", user_index="users", similarity="max_inner_product",
                          thresholds=Thresholds(exact_max_matches=500, post_filter_min_share=0.1, walk_candidates=300,
                                                partition_candidates=200))
    current, other = [1.0, 0.0], [0.0, 2.0]
    user = UserVector("u", current, ["i1"], "g", "g", item_exact_vectors=True, interests=(current, other))
    page_rows = [ROWS["for_you"], ROWS["audiobooks"], ROWS["podcasts"], ROWS["new"]]
    assert row_interests(page_rows, user, stats) == {"audiobooks": 1}
    page = build_page_search(page_rows, user, USER_FILTERS, target, stats=stats)
    by_row = {rs.row.id: rs for rs in page.rows}
    assert by_row["audiobooks"].interest == 1 and by_row["for_you"].interest == by_row["new"].interest == 0
    assert len(page.lines) // 2 <= len(page_rows)
    searched_with = {}
    for rs in page.rows:
        body = page.lines[2 * rs.slot + 1]
        knn = json.dumps(body["query"])
        searched_with[rs.row.id] = "[0.0, 1.0]" in knn or "[0.0, 2.0]" in knn
    assert searched_with == {"for_you": False, "audiobooks": True, "podcasts": False, "new": False}
    assert by_row["audiobooks"].slot != by_row["for_you"].slot == by_row["new"].slot   # a shared search per interest
    assert user.with_interest(1).vector == other and user.with_interest(0) is user
    one_vector = UserVector("u", current, ["i1"], "g", "g", item_exact_vectors=True)
    assert row_interests(page_rows, one_vector, stats) == {}
    assert [rs.interest for rs in build_page_search(page_rows, one_vector, USER_FILTERS, target, stats=stats).rows] \
        == [0, 0, 0, 0]


def test_hits_read_from_doc_values_have_the_shape_and_values_of_hits_read_from_source():
    from facetrec.serving.hit_fields import HitFields, hit_id

    schema = bundled_schema("synthetic")
    fields = HitFields.of(schema, doc_values=True)
    asked = fields.request()
    assert asked["_source"] is False and asked["stored_fields"] == "_none_"
    assert "title.keyword" in asked["docvalue_fields"] and {"field": "published_at", "format": "yyyy-MM-dd"} in \
        asked["docvalue_fields"]
    assert fields.request(vectors=True)["_source"] == {"includes": ["item_embed"]}
    raw = {"_index": "items-g", "_score": 0.5, "fields": {
        "item_id": ["i7"], "title.keyword": ["Seven"], "categories": ["comedy", "drama"], "published_at": ["2021-04-29"],
        "popularity": [0.7095649838447571], "generation": ["g"], "language": ["en"]}}
    assert hit_id(raw) == "i7"
    assert fields.hit(raw) == {"_index": "items-g", "_score": 0.5, "_id": "i7", "_source": {
        "item_id": "i7", "title": "Seven", "categories": ["comedy", "drama"], "published_at": "2021-04-29",
        "popularity": 0.709565, "generation": "g", "language": "en"}}
    from_source = {"_id": "i7", "_source": {"title": "Seven"}}
    assert HitFields.of(schema, doc_values=False).hit(from_source) is from_source
    assert HitFields.of(schema, doc_values=False).request() == {"_source": schema.source_fields}


def test_a_page_read_from_doc_values_serves_what_a_page_read_from_source_serves(es, layouts):
    """The same pages asked both ways on the real node (a generation made since records the flag):
    the same items, in the same order, with the same fields and values."""
    import dataclasses as dc

    from facetrec.catalog.counts import StatsCache
    from facetrec.catalog.meta import read_meta
    from facetrec.es import alias_index
    from facetrec.serving.homepage import recommend

    settings, catalog, _, users, _ = layouts["graph"]
    assert read_meta(es, alias_index(es, settings.item_alias)).display_doc_values
    cache = StatsCache(catalog.homepage_rows(), catalog.user_filters)
    target = SearchConfig.from_settings(settings, request_timeout_s=30.0, stats=cache)
    for user in users[:5]:
        by_doc_values = recommend(es, target, user["user_id"], catalog.homepage_rows(), E2E_FILTERS)
        stats = cache.get(es, settings.item_alias, by_doc_values["generation"], 30.0)
        cache._by_generation[stats.generation] = dc.replace(stats, display_doc_values=False)
        by_source = recommend(es, target, user["user_id"], catalog.homepage_rows(), E2E_FILTERS)
        cache._by_generation[stats.generation] = stats
        for dv_row, src_row in zip(by_doc_values["rows"], by_source["rows"]):
            for dv_item, src_item in zip(dv_row["items"], src_row["items"]):
                assert dv_item == src_item, (dv_row["id"], dv_item, src_item)
            assert len(dv_row["items"]) == len(src_row["items"]), dv_row["id"]
        assert any(r["items"] for r in by_source["rows"])


def test_a_smaller_partition_is_walked_with_fewer_candidates():
    from facetrec.serving.planner import partition_candidates

    parts = {"item_format": {"ebook": {"field": "e", "docs": 450_000}, "podcast": {"field": "p", "docs": 100_000},
                             "tiny": {"field": "t", "docs": 10}}}
    sized = partition_candidates(parts, 2500)
    assert sized == {"e": 2500, "p": math.ceil(2500 * math.sqrt(100 / 450)), "t": 100}
    assert partition_candidates({}, 2500) == {}
