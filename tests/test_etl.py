"""Spark ETL transforms on tiny inline frames, and run_etl's reporting of what it drops (the inputs'
own checks: tests/test_inputs.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from catalogs import schema_of
from facetrec.catalog.schema import CatalogSchema
from facetrec.model import ties
from ingest.embedding import etl
from ingest.embedding.datasets import DatasetError


def events_df(spark, rows):
    return spark.createDataFrame(rows, "user_id string, item_id string, event_type string, timestamp long")


def test_dedupe_keeps_the_earliest_event_per_user_and_item(spark):
    df = events_df(spark, [("u", "a", "read", 5), ("u", "a", "read", 3), ("u", "b", "read", 4), ("v", "a", "read", 9)])
    out = sorted(tuple(r) for r in etl.dedupe_events(df).collect())
    assert out == [("u", "a", "read", 3), ("u", "b", "read", 4), ("v", "a", "read", 9)]


def test_sequences_are_time_ordered_with_item_id_tie_break_and_split_leave_last_out(spark):
    df = events_df(spark, [("u", "c", "r", 2), ("u", "b", "r", 2), ("u", "a", "r", 1), ("u", "d", "r", 3),
                           ("v", "x", "r", 1), ("v", "y", "r", 2)])
    seqs = {r.user_id: r.history for r in etl.user_sequences(df, "item_id").collect()}
    assert seqs == {"u": ["a", "b", "c", "d"], "v": ["x", "y"]}
    splits = {r.user_id: r for r in etl.leave_last_out(etl.user_sequences(df, "item_id")).collect()}
    assert set(splits) == {"u"}  # v has fewer than 3 events
    assert (splits["u"].train_items, splits["u"].valid_item, splits["u"].test_item) == (["a", "b"], "c", "d")


def test_same_second_events_follow_the_seeded_hash_of_user_and_item_not_the_ids(spark):
    """The tie-robust protocol (facetrec.model.ties): a same-second burst is ordered by the hash Python
    computes too; the order differs from the id order (string and numeric) and between users."""
    burst = [str(i) for i in (2, 10, 1, 30, 4, 22, 7, 15, 9, 11)]
    rows = [(user, item, "r", 100) for user in ("u1", "u2") for item in burst] + [("u1", "0", "r", 50)]
    df = events_df(spark, rows)
    seqs = {r.user_id: r.history for r in etl.user_sequences(df).collect()}
    for user in ("u1", "u2"):
        expected = sorted(burst, key=lambda item: ties.tie_key(user, item))
        assert seqs[user][-len(burst):] == expected
    assert seqs["u1"][0] == "0"                       # time still comes first
    assert seqs["u1"][1:] != sorted(burst) and seqs["u1"][1:] != sorted(burst, key=int)
    assert seqs["u1"][1:] != seqs["u2"]              # no shared order of the items
    assert {r.user_id: r.history for r in etl.user_sequences(df, "numeric").collect()}["u2"] == sorted(burst, key=int)
    with pytest.raises(ValueError, match="tie_break"):
        etl.user_sequences(df, "alphabetical")


def test_keep_last_and_popularity_from_train_only(spark):
    df = spark.createDataFrame([(["a", "b", "c"],), (["a"],)], "h array<string>")
    assert [r.k for r in df.select(etl.keep_last("h", 2).alias("k")).collect()] == [["b", "c"], ["a"]]
    splits = spark.createDataFrame([("u", ["a", "b"], "c", "d"), ("v", ["a"], "b", "c")],
                                   "user_id string, train_items array<string>, valid_item string, test_item string")
    counts = {r.item_id: r.train_count for r in etl.train_popularity(splits).collect()}
    assert counts == {"a": 2, "b": 1}


def test_items_are_numbered_most_popular_first_across_partitions(spark):
    """item_idx is 1..N in (popularity desc, item_id) order however the catalog is partitioned
    (numbered per sorted partition, not by one window over the whole catalog)."""
    import random

    ids = [f"i{n:04d}" for n in range(500)]
    counts = {item: random.Random(item).randint(0, 20) for item in ids}
    catalog = spark.createDataFrame([(i, f"T {i}") for i in ids], "item_id string, title string").repartition(7)
    popularity = spark.createDataFrame([(i, c) for i, c in counts.items() if c], "item_id string, train_count long")
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")   # keep the sort's 8 partitions (no coalescing)
    try:
        numbered = etl.index_items(catalog, popularity)
        rows = numbered.collect()
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", adaptive)
    by_idx = sorted(rows, key=lambda r: r.item_idx)
    assert [r.item_idx for r in by_idx] == list(range(1, 501))
    assert [r.item_id for r in by_idx] == sorted(ids, key=lambda i: (-counts[i], i))
    top = max(counts.values())
    assert all(r.popularity == pytest.approx(counts[r.item_id] / top) for r in rows)
    assert set(rows[0].asDict()) == {"item_id", "title", "train_count", "item_idx", "popularity"}


def write(tmp_path, name, frame):
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return path


SCHEMA = schema_of({"categories": "keyword_list"}, name="tiny", features=("categories",))
LENIENT = CatalogSchema.from_dict({**SCHEMA.to_dict(), "checks": {"max_rejected_share": 0.5}})


def test_run_etl_reports_every_drop(spark, tmp_path):
    events = pd.DataFrame({"user_id": ["u"] * 5 + ["v"] * 2, "item_id": ["a", "b", "b", "c", "ghost", "a", "b"],
                           "event_type": "read", "timestamp": [1, 2, 2, 3, 4, 1, 10**12]})
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"],
                            "categories": [["x"], ["x", "y"], []]})
    report = etl.run_etl(spark, LENIENT, write(tmp_path, "e.parquet", events), write(tmp_path, "c.parquet", catalog),
                         tmp_path / "out", now_ts=1000)
    assert report["events_read"] == 7 and report["dropped_duplicates"] == 1
    assert report["rejected"]["events"]["reasons"] == {"future_time": 1, "unknown_item": 1}
    assert report["users_kept"] == 1 and report["dropped_users_too_short"] == 1  # v keeps one event
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").sort_values("item_idx")
    assert list(items["item_idx"]) == [1, 2, 3] and items["item_id"].iloc[0] == "a"  # most popular in train first
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text())
    assert vocab["item_facets"]["categories"] == ["x", "y"]
    assert json.loads((tmp_path / "out" / "catalog.json").read_text())["name"] == "tiny"
    sample = (tmp_path / "out" / "rejected" / "events" / "unknown_item.jsonl").read_text().splitlines()
    assert [json.loads(line)["item_id"] for line in sample] == ["ghost"]


def test_run_etl_fails_past_the_rejected_share_and_writes_no_output(spark, tmp_path):
    events = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "ghost"], "event_type": "read",
                           "timestamp": [1, 2, 3, 4]})
    catalog = write(tmp_path, "c.parquet", pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]}))
    with pytest.raises(DatasetError, match=r"1 of 4 events rows were rejected \(25.00%, above max_rejected_share "
                                           r"1.00%.*unknown_item: 1.*Nothing was published"):
        etl.run_etl(spark, SCHEMA, write(tmp_path, "e.parquet", events), catalog, tmp_path / "out", now_ts=1000)
    assert not (tmp_path / "out" / "items.parquet").exists()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["failed"] is True


def test_run_etl_names_missing_columns_and_rejects_empty_input(spark, tmp_path):
    catalog = write(tmp_path, "c.parquet", pd.DataFrame({"item_id": ["a"], "title": ["A"]}))
    bad = write(tmp_path, "bad.parquet", pd.DataFrame({"user": ["u"], "item_id": ["a"], "timestamp": [1]}))
    with pytest.raises(DatasetError, match=r"has no column 'user_id' \(the catalog schema names it\)"):
        etl.run_etl(spark, SCHEMA, bad, catalog, tmp_path / "o1")
    empty = write(tmp_path, "empty.parquet", pd.DataFrame({"user_id": pd.Series([], dtype=str),
                                                           "item_id": pd.Series([], dtype=str),
                                                           "event_type": pd.Series([], dtype=str),
                                                           "timestamp": pd.Series([], dtype="int64")}))
    with pytest.raises(DatasetError, match="no events"):
        etl.run_etl(spark, SCHEMA, empty, catalog, tmp_path / "o2")
