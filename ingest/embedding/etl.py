"""Spark ETL: interaction logs + item catalog -> clean, time-ordered per-user sequences with a
leave-last-out split, item/facet vocabularies and popularity counts, written as parquet.

Every transform takes and returns DataFrames (unit-tested on tiny inline frames). Dropped rows
are counted and reported, never silently lost.

    out/items.parquet   item_idx (1..N), item_id, title, facets, published_at, train_count, popularity
    out/users.parquet   user_id, history (time-ordered item ids), train_items, valid_item, test_item, features
    out/vocab.json      facet and user-feature vocabularies
    out/report.json     counts: read, duplicates, future, unknown items, short users; data_version
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from facetrec.model import ties
from ingest.embedding.datasets import CATALOG_COLUMNS, EVENT_COLUMNS, ITEM_FACETS, DatasetError

MIN_EVENTS = 3  # train needs at least one item before the validation and test items


def read_table(spark: SparkSession, path: str | Path) -> DataFrame:
    path = str(path)
    if path.endswith(".csv"):
        return spark.read.option("header", True).option("inferSchema", True).csv(path)
    if path.endswith((".jsonl", ".json")):
        return spark.read.json(path)
    return spark.read.parquet(path)


def require_columns(df: DataFrame, columns, what: str) -> DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{what} is missing required column(s) {missing}; it has {df.columns}")
    return df


def normalise_events(df: DataFrame) -> DataFrame:
    require_columns(df, EVENT_COLUMNS, "events")
    return df.select(F.col("user_id").cast("string"), F.col("item_id").cast("string"),
                     F.col("event_type").cast("string"), F.col("timestamp").cast("long"))


def drop_invalid(df: DataFrame) -> DataFrame:
    return df.where(F.col("user_id").isNotNull() & F.col("item_id").isNotNull() & F.col("timestamp").isNotNull())


def dedupe_events(df: DataFrame) -> DataFrame:
    """One event per (user, item): the earliest (ties broken by event_type)."""
    w = Window.partitionBy("user_id", "item_id").orderBy("timestamp", "event_type")
    return df.withColumn("_rank", F.row_number().over(w)).where("_rank = 1").drop("_rank")


def drop_future(df: DataFrame, now_ts: int) -> DataFrame:
    return df.where(F.col("timestamp") <= F.lit(now_ts))


def drop_unknown_items(events: DataFrame, catalog: DataFrame) -> DataFrame:
    return events.join(catalog.select("item_id"), on="item_id", how="left_semi")


def tie_order(tie_break: str = "hash"):
    """The column that orders a user's events of one timestamp (``facetrec.model.ties``): the seeded hash
    of (user, item) by default; the item id as a string or as a number only to measure what the
    protocol changed."""
    ties.check(tie_break)
    if tie_break == "hash":
        return F.sha2(F.concat_ws(ties.SEPARATOR, F.lit(ties.TIE_SEED), F.col("user_id"), F.col("item_id")), 256)
    if tie_break == "numeric":
        return F.col("item_id").cast("long")
    return F.col("item_id")


def user_sequences(events: DataFrame, tie_break: str = "hash") -> DataFrame:
    """user_id -> history: item ids ordered by timestamp, same-second events by ``tie_order``."""
    return (events.groupBy("user_id")
            .agg(F.array_sort(F.collect_list(F.struct(F.col("timestamp"), tie_order(tie_break).alias("_tie"),
                                                      F.col("item_id")))).alias("_events"))
            .select("user_id", F.col("_events.item_id").alias("history"),
                    F.col("_events.timestamp").alias("history_ts")))


def leave_last_out(sequences: DataFrame, min_events: int = MIN_EVENTS) -> DataFrame:
    """Last item = test, second to last = validation, the rest = train. Shorter users are dropped."""
    n = F.size("history")
    return (sequences.where(n >= min_events)
            .withColumn("train_items", F.slice("history", 1, n - 2))
            .withColumn("valid_item", F.element_at("history", -2))
            .withColumn("test_item", F.element_at("history", -1)))


def keep_last(column: str, n: int):
    """The last ``n`` elements of an array column (the whole array when it is shorter)."""
    return F.when(F.size(column) > n, F.slice(column, -n, n)).otherwise(F.col(column))


def train_popularity(splits: DataFrame) -> DataFrame:
    return (splits.select(F.explode("train_items").alias("item_id"))
            .groupBy("item_id").agg(F.count("*").alias("train_count")))


def index_items(catalog: DataFrame, popularity: DataFrame) -> DataFrame:
    """item_idx 1..N (0 is padding), most popular first, then by item_id (deterministic).

    Numbered without a window over the whole catalog (which would pull every item into one
    partition, and makes Spark warn about it): a global sort, then each sorted partition's rows are
    numbered from the count of the partitions before it. The sorted rows are checkpointed first, so
    the counts and the numbering read the same partitions (never a recomputed, re-sampled sort)."""
    joined = catalog.join(popularity, "item_id", "left").fillna({"train_count": 0})
    max_count = joined.agg(F.max("train_count")).first()[0] or 0
    ordered = (joined.orderBy(F.desc("train_count"), F.asc("item_id"))
               .withColumn("_part", F.spark_partition_id())
               .withColumn("_row", F.monotonically_increasing_id())).localCheckpoint(eager=True)
    sizes = sorted((r["_part"], r["count"]) for r in ordered.groupBy("_part").count().collect())
    offsets, total = [], 0
    for part, count in sizes:
        offsets.append((part, total))
        total += count
    start = ordered.sparkSession.createDataFrame(offsets, "_part int, _offset long")
    within = Window.partitionBy("_part").orderBy("_row")
    return (ordered.join(F.broadcast(start), "_part")
            .withColumn("item_idx", (F.col("_offset") + F.row_number().over(within)).cast("int"))
            .withColumn("popularity", (F.col("train_count") / F.lit(max(max_count, 1))).cast("float"))
            .drop("_part", "_row", "_offset"))


def vocabulary(df: DataFrame, column: str) -> list[str]:
    col = F.col(column)
    if dict(df.dtypes)[column].startswith("array"):
        col = F.explode(column)
    values = df.select(col.alias("v")).where(F.col("v").isNotNull()).distinct().collect()
    return sorted(str(r["v"]) for r in values)


def run_etl(spark: SparkSession, events_path, catalog_path, out_dir, users_path=None, now_ts: int | None = None,
            max_history: int = 500, tie_break: str = "hash") -> dict:
    started = time.perf_counter()
    ties.check(tie_break)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now_ts = int(now_ts if now_ts is not None else time.time())

    raw = normalise_events(read_table(spark, events_path)).cache()
    catalog = require_columns(read_table(spark, catalog_path), CATALOG_COLUMNS, "catalog")
    catalog = catalog.withColumn("item_id", F.col("item_id").cast("string"))
    if catalog.count() == 0:
        raise DatasetError(f"the catalog {catalog_path} is empty")
    dup_items = catalog.groupBy("item_id").count().where("count > 1").count()
    if dup_items:
        raise DatasetError(f"the catalog has {dup_items} duplicated item_id values")

    counts = {"events_read": raw.count(), "tie_break": tie_break}
    if counts["events_read"] == 0:
        raise DatasetError(f"no events in {events_path}")
    valid = drop_invalid(raw)
    counts["dropped_null_fields"] = counts["events_read"] - valid.count()
    deduped = dedupe_events(valid)
    counts["dropped_duplicates"] = counts["events_read"] - counts["dropped_null_fields"] - deduped.count()
    current = drop_future(deduped, now_ts)
    counts["dropped_future_timestamps"] = deduped.count() - current.count()
    known = drop_unknown_items(current, catalog).cache()
    counts["dropped_unknown_items"] = current.count() - known.count()
    counts["events_kept"] = known.count()

    if tie_break == "numeric" and known.where(F.col("item_id").cast("long").isNull()).limit(1).count():
        raise DatasetError("tie_break='numeric' needs numeric item ids")
    sequences = user_sequences(known, tie_break)
    splits = leave_last_out(sequences).cache()
    counts["users_total"] = sequences.count()
    counts["users_kept"] = splits.count()
    counts["dropped_users_too_short"] = counts["users_total"] - counts["users_kept"]
    if counts["users_kept"] == 0:
        raise DatasetError(f"no user has at least {MIN_EVENTS} events after cleaning: {counts}")

    items = index_items(catalog, train_popularity(splits)).cache()
    counts["items"] = items.count()

    users = splits.withColumn("history", keep_last("history", max_history)).drop("history_ts")
    if users_path is not None:
        features = read_table(spark, users_path).withColumn("user_id", F.col("user_id").cast("string"))
        users = users.join(features, "user_id", "left")
    user_features = [c for c in users.columns if c not in ("user_id", "history", "train_items", "valid_item",
                                                           "test_item")]
    facets = [c for c in ITEM_FACETS if c in items.columns]
    vocab = {"item_facets": {c: vocabulary(items, c) for c in facets},
             "user_features": {c: vocabulary(users, c) for c in user_features}}

    items.orderBy("item_idx").write.mode("overwrite").parquet(str(out / "items.parquet"))
    users.orderBy("user_id").write.mode("overwrite").parquet(str(out / "users.parquet"))
    (out / "vocab.json").write_text(json.dumps(vocab, indent=2))
    counts["data_version"] = hashlib.sha256(json.dumps(counts, sort_keys=True).encode()
                                            + json.dumps(vocab, sort_keys=True).encode()).hexdigest()[:12]
    # The newest event the batch saw (epoch seconds): events logged through the API after it are
    # re-applied to the generation this run publishes (facetrec.events.apply.replay).
    counts["events_until"] = int(known.agg(F.max("timestamp")).first()[0])
    counts["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(counts, indent=2))
    raw.unpersist()
    known.unpersist()
    splits.unpersist()
    items.unpersist()
    return counts
