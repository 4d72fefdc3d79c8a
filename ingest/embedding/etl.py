"""Spark ETL: interaction logs + item catalog (shaped as the catalog schema says) -> clean,
time-ordered per-user sequences with a leave-last-out split, item feature vocabularies and
popularity counts, written as parquet.

Every transform takes and returns DataFrames (unit-tested on tiny inline frames). Dropped rows are
counted per reason and reported, a sample of each kept, never silently lost (``ingest.embedding.inputs``);
more rejected rows than the schema allows fail the run before anything is published.

    out/items.parquet   item_idx (1..N), item_id, title (image, url), the facets, train_count, popularity
    out/users.parquet   user_id, history (time-ordered item ids), train_items, valid_item, test_item, features
    out/vocab.json      the item tower's feature vocabularies (categorical values, numeric bucket bounds),
                        user-feature vocabularies
    out/catalog.json    the catalog schema the run used (training, export and publish read it from here)
    out/report.json     counts: read, rejected per input and reason, duplicates, short users; data_version
    out/rejected/       <input>/<reason>.jsonl: a sample of each kind of rejected row
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from facetrec.catalog.schema import CatalogSchema
from facetrec.model import ties
from ingest.embedding import inputs
from ingest.embedding.datasets import DatasetError

MIN_EVENTS = 3  # train needs at least one item before the validation and test items


def dedupe_events(df: DataFrame) -> DataFrame:
    """One event per (user, item): the earliest (ties broken by event_type)."""
    w = Window.partitionBy("user_id", "item_id").orderBy("timestamp", "event_type")
    return df.withColumn("_rank", F.row_number().over(w)).where("_rank = 1").drop("_rank")


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


def numeric_buckets(items: DataFrame, facet) -> list[float]:
    """Quantile bounds of a numeric or date feature over the catalog (dates as days since the epoch):
    at most ``facet.buckets`` buckets, the item tower's embedding index of a value."""
    value = F.datediff(F.to_date(F.col(facet.name)), F.lit("1970-01-01")) if facet.type == "date" \
        else F.col(facet.name).cast("double")
    present = items.select(value.alias("v")).where(F.col("v").isNotNull())
    probabilities = [i / facet.buckets for i in range(1, facet.buckets)]
    bounds = present.approxQuantile("v", probabilities, 0.001) if probabilities else []
    return sorted(set(float(b) for b in bounds))


def feature_vocabulary(items: DataFrame, schema: CatalogSchema) -> dict:
    """What the item tower embeds, per feature facet of the schema: the values of a categorical
    one, the bucket bounds of a numeric or date one."""
    categorical = {f.name: vocabulary(items, f.name) for f in schema.feature_facets if f.categorical}
    numeric = {f.name: numeric_buckets(items, f) for f in schema.feature_facets if not f.categorical}
    return {"item_facets": categorical, "item_buckets": numeric}


def read_inputs(spark: SparkSession, schema: CatalogSchema, events_uri, catalog_uri, users_uri=None) -> dict:
    """The inputs, each checked against the schema's columns before any work (``inputs.check_columns``)."""
    frames = {"catalog": inputs.read_input(spark, catalog_uri), "events": inputs.read_input(spark, events_uri)}
    inputs.check_columns(frames["catalog"], inputs.catalog_columns(schema), f"the catalog {catalog_uri}",
                         optional=tuple(f.column for f in schema.facets)
                         + tuple(c for c in (schema.items.image, schema.items.url) if c))
    inputs.check_columns(frames["events"], inputs.event_columns(schema), f"the events {events_uri}",
                         optional=(schema.events.type,) if schema.events.type else ())
    if users_uri is not None:
        frames["users"] = inputs.read_input(spark, users_uri)
        inputs.check_columns(frames["users"], inputs.user_columns(schema), f"the users {users_uri}")
    return frames


def run_etl(spark: SparkSession, schema: CatalogSchema, events_path, catalog_path, out_dir, users_path=None,
            now_ts: int | None = None, max_history: int = 500, tie_break: str = "hash") -> dict:
    """The whole ETL of one run (see the module doc); returns the report."""
    started = time.perf_counter()
    read_at = datetime.now(timezone.utc)   # the catalog snapshot: item changes after it are replayed at publish
    ties.check(tie_break)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now_ts = int(now_ts if now_ts is not None else time.time())
    frames = read_inputs(spark, schema, events_path, catalog_path, users_path)
    rejections = inputs.Rejections(out, schema)

    checked_catalog = inputs.catalog_frame(frames["catalog"], schema).cache()
    catalog_counts = rejections.record("catalog", checked_catalog)
    if catalog_counts["read"] == 0:
        raise DatasetError(f"the catalog {catalog_path} is empty")
    catalog = checked_catalog.where(F.col(inputs.REJECTED).isNull()).drop(inputs.REJECTED, inputs.ORDER, "_raw")

    checked_events = inputs.event_frame(frames["events"], schema, now_ts)
    known_ids = catalog.select("item_id").withColumn("_known", F.lit(True))
    checked_events = (checked_events.join(known_ids, "item_id", "left")
                      .withColumn(inputs.REJECTED, F.coalesce(
                          F.col(inputs.REJECTED), F.when(F.col("_known").isNull(), F.lit("unknown_item"))))
                      .drop("_known")).cache()
    event_counts = rejections.record("events", checked_events)
    if event_counts["read"] == 0:
        raise DatasetError(f"no events in {events_path}")
    counts: dict = {"events_read": event_counts["read"], "tie_break": tie_break,
                    "rejected": rejections.counts}
    good = checked_events.where(F.col(inputs.REJECTED).isNull())
    kept_types = good.where(~F.col("_filtered"))
    counts["events_filtered_by_type"] = good.count() - kept_types.count()
    valid = kept_types.select("user_id", "item_id", "event_type", "timestamp")
    deduped = dedupe_events(valid).cache()
    counts["dropped_duplicates"] = kept_types.count() - deduped.count()
    counts["events_kept"] = deduped.count()

    user_features = None
    if "users" in frames:
        checked_users = inputs.user_frame(frames["users"], schema).cache()
        rejections.record("users", checked_users)
        user_features = checked_users.where(F.col(inputs.REJECTED).isNull()).drop(inputs.REJECTED, "_raw")
    (out / "report.json").write_text(json.dumps({**counts, "failed": True}, indent=2))
    rejections.check()   # more rejected than the schema allows: the run fails here, before any output

    if tie_break == "numeric" and deduped.where(F.col("item_id").cast("long").isNull()).limit(1).count():
        raise DatasetError("tie_break='numeric' needs numeric item ids")
    sequences = user_sequences(deduped, tie_break)
    splits = leave_last_out(sequences).cache()
    counts["users_total"] = sequences.count()
    counts["users_kept"] = splits.count()
    counts["dropped_users_too_short"] = counts["users_total"] - counts["users_kept"]
    if counts["users_kept"] == 0:
        raise DatasetError(f"no user has at least {MIN_EVENTS} events after cleaning: {counts}")

    items = index_items(catalog, train_popularity(splits)).cache()
    counts["items"] = items.count()
    users = splits.withColumn("history", keep_last("history", max_history)).drop("history_ts")
    if user_features is not None:
        users = users.join(user_features, "user_id", "left")
    vocab = {**feature_vocabulary(items, schema),
             "user_features": {c: vocabulary(users, c) for c in schema.users.features if c in users.columns}}

    items.orderBy("item_idx").write.mode("overwrite").parquet(str(out / "items.parquet"))
    users.orderBy("user_id").write.mode("overwrite").parquet(str(out / "users.parquet"))
    (out / "vocab.json").write_text(json.dumps(vocab, indent=2))
    (out / "catalog.json").write_text(json.dumps(schema.to_dict(), indent=2))
    counts["data_version"] = hashlib.sha256(json.dumps(counts, sort_keys=True).encode()
                                            + json.dumps(vocab, sort_keys=True).encode()).hexdigest()[:12]
    # The newest event the batch saw (epoch seconds): events logged through the API after it are
    # re-applied to the generation this run publishes (facetrec.events.apply.replay).
    counts["events_until"] = int(deduped.agg(F.max("timestamp")).first()[0])
    counts["catalog_read_at"] = read_at.isoformat()
    counts["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(counts, indent=2))
    for frame in (checked_catalog, checked_events, deduped, splits, items):
        frame.unpersist()
    return counts
