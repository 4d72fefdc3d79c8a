"""A catalog's input files as the ETL reads them: found where they live, checked against the catalog
schema before any work, normalised to the schema's names and types, every bad row counted.

* ``read_input``: Parquet, CSV (a header line) or JSON lines; a file, a directory of part files or a
  glob; any URI Spark can read. The format is the extension's (``.parquet``, ``.csv``, ``.jsonl`` /
  ``.json`` / ``.ndjson``; a directory: its files'), or the one named.
* ``check_columns``: a missing column, or a column whose values cannot be of the declared type (a
  list where one value is declared, a number column for a list, a text column none of whose values
  parses), fails at once (``DatasetError``) naming the column, the expected type and an offending value.
* ``catalog_frame``, ``event_frame``, ``user_frame``: the input with the schema's canonical columns
  and a ``_rejected`` column: null for a good row, else why it is dropped (``unparseable:<facet>``,
  ``out_of_range:<facet>``, ``id_too_long``, ``unparseable_time``, ...). ``Rejections`` counts them per
  reason, writes a sample of each beside the run's report and fails the run when more than the
  schema's ``max_rejected_share`` of an input is rejected.

Every transform takes and returns DataFrames (tested on tiny inline frames).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from facetrec.catalog.schema import CatalogSchema, Facet
from ingest.embedding.datasets import DatasetError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json"}
CORRUPT = "_corrupt_record"
REJECTED = "_rejected"
ORDER = "_order"
SAMPLE_TYPE_CHECK = 1000    # values a text column's type check parses (none parsing: the column is wrong)


# ---- reading ----------------------------------------------------------------------------------------

def input_format(uri: str, declared: str | None = None) -> str:
    """The input's format: ``declared``, else its extension's, else (a local directory) its files'."""
    if declared:
        if declared not in set(FORMATS.values()):
            raise DatasetError(f"{uri}: unknown input format {declared!r}; one of {sorted(set(FORMATS.values()))}")
        return declared
    path = urlparse(uri).path if "://" in uri else uri
    suffix = Path(path.rstrip("/*")).suffix.lower() or Path(path).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    local = Path(path)
    if "://" not in uri or uri.startswith("file://"):
        found = {FORMATS[p.suffix.lower()] for p in (local.rglob("*") if local.is_dir() else []) if p.suffix.lower()
                 in FORMATS and not p.name.startswith(("_", "."))}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            raise DatasetError(f"{uri}: holds files of several formats ({sorted(found)}); point at one kind")
    raise DatasetError(f"{uri}: cannot tell its format from its name; name files .parquet, .csv or .jsonl, or give "
                       "the format")


def read_input(spark: SparkSession, uri: str | Path, declared: str | None = None) -> DataFrame:
    """One input as a DataFrame (lazily: nothing but a schema is read). CSV and JSON keep their values
    as text (cast later, with every bad value a counted rejection); malformed JSON lines are kept in
    ``_corrupt_record``."""
    uri = str(uri)
    kind = input_format(uri, declared)
    reader = spark.read
    if kind == "csv":
        return reader.option("header", True).option("inferSchema", False).option("mode", "PERMISSIVE").csv(uri)
    if kind == "json":
        return (reader.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
                .option("primitivesAsString", True).json(uri))
    return reader.parquet(uri)


# ---- checks before any work -----------------------------------------------------------------------

def check_columns(df: DataFrame, expected: dict[str, str], what: str, optional: tuple[str, ...] = ()) -> None:
    """Fail (DatasetError) on a missing column or one of the wrong type, naming the column, the
    expected type and an offending value. ``expected``: input column -> a facet type, ``text``
    (an id, a title) or ``time:<format>``."""
    columns = set(df.columns)
    missing = [c for c in expected if c not in columns and c not in optional]
    if missing:
        raise DatasetError(f"{what} has no column {missing[0]!r} (the catalog schema names it); its columns are "
                           f"{sorted(c for c in columns if c != CORRUPT)}")
    for column, kind in expected.items():
        if column in columns:
            _check_type(df, column, kind, what)


def _check_type(df: DataFrame, column: str, kind: str, what: str) -> None:
    dtype = df.schema[column].dataType
    expected = "a list of text values" if kind == "keyword_list" else kind.replace("time:", "a time in ")
    structured = isinstance(dtype, (T.StructType, T.MapType, T.BinaryType))
    listed = isinstance(dtype, T.ArrayType)
    wrong = structured or (listed and kind != "keyword_list") or \
        (listed and not isinstance(dtype.elementType, (T.StringType, T.NumericType, T.BooleanType)))
    needs_parse = kind.startswith("time:") or (isinstance(dtype, T.StringType)
                                                and kind in ("integer", "float", "boolean", "date"))
    if not wrong and needs_parse:
        sample = df.select(F.col(column).alias("v")).where(_present(F.col(column))).limit(SAMPLE_TYPE_CHECK)
        parsed = sample.select(F.col("v"), _parse(F.col("v"), kind, dtype).alias("p"))
        counts = parsed.agg(F.count("v").alias("n"), F.count("p").alias("ok")).first()
        wrong = counts["n"] > 0 and counts["ok"] == 0
    if wrong:
        example = df.select(F.col(column).cast("string") if not structured else F.to_json(F.col(column))) \
            .where(F.col(column).isNotNull()).limit(1).first()
        shown = repr(example[0])[:80] if example else "none"
        raise DatasetError(f"{what}: column {column!r} should hold {expected}, it holds {dtype.simpleString()} "
                           f"values such as {shown}")


def _parse(col: Column, kind: str, dtype: T.DataType) -> Column:
    """``col`` as the type ``kind`` says, null where it does not parse (never an error)."""
    if kind.startswith("time:"):
        return epoch_seconds(col, kind.split(":", 1)[1], dtype)
    if kind == "integer":
        number = col.try_cast("double")
        return F.when(number == F.floor(number), number.try_cast("long"))
    if kind == "float":
        return col.try_cast("double")
    if kind == "boolean":
        return col.try_cast("boolean")
    if kind == "date":
        if isinstance(dtype, (T.DateType, T.TimestampType, T.TimestampNTZType)):
            return F.date_format(col, "yyyy-MM-dd")
        return F.date_format(F.to_date(F.try_to_timestamp(col.cast("string"))), "yyyy-MM-dd")
    return col.cast("string")


def epoch_seconds(col: Column, time_format: str, dtype: T.DataType) -> Column:
    """An event time as epoch seconds (a double: sub-second order kept), null where it does not parse."""
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return F.unix_micros(col.cast("timestamp")) / 1e6
    if time_format == "iso8601":
        return F.unix_micros(F.try_to_timestamp(col.cast("string"))) / 1e6
    seconds = col.try_cast("double")
    return seconds / 1000.0 if time_format == "epoch_ms" else seconds


# ---- normalising, with a reason per dropped row ----------------------------------------------------

def _first_reason(*checks: tuple[Column, str | Column]) -> Column:
    """The reason of the first failing check (``(failed, reason)``), null when none fails."""
    out = F.lit(None).cast("string")
    for failed, reason in reversed(checks):
        out = F.when(failed, reason if isinstance(reason, Column) else F.lit(reason)).otherwise(out)
    return out


def _present(col: Column) -> Column:
    return col.isNotNull() & (F.trim(col.cast("string")) != "")


def _id(col: Column) -> Column:
    return F.trim(col.cast("string"))


def _facet_value(df: DataFrame, facet: Facet) -> Column:
    raw = F.col(facet.column)
    dtype = df.schema[facet.column].dataType
    if facet.type == "keyword_list":
        if isinstance(dtype, T.ArrayType):
            values = F.transform(raw, lambda v: F.trim(v.cast("string")))
        else:
            text = raw.cast("string")
            values = F.split(text, _regex_escape(facet.separator)) if facet.separator else F.array(text)
            values = F.transform(values, lambda v: F.trim(v))
        return F.array_distinct(F.filter(values, lambda v: v.isNotNull() & (v != "")))
    if facet.type == "keyword":
        return F.when(_present(raw), F.trim(raw.cast("string")))
    return _parse(raw, facet.type, dtype)


def _regex_escape(separator: str) -> str:
    return "\\" + separator if not separator.isalnum() else separator


def catalog_frame(df: DataFrame, schema: CatalogSchema) -> DataFrame:
    """The catalog with ``item_id``, ``title`` (``image``, ``url``) and each facet under its name, as
    its type; ``_rejected`` says why a row is dropped; ``_order`` keeps the input's order (the first
    of duplicated ids is kept)."""
    items, checks = schema.items, schema.checks
    df = df.withColumn(ORDER, F.monotonically_increasing_id())
    out = [_id(F.col(items.id)).alias("item_id"), F.col(items.title).cast("string").alias("title")]
    out += [F.col(getattr(items, k)).cast("string").alias(k) for k in ("image", "url")
            if getattr(items, k) and getattr(items, k) in df.columns]
    reasons: list[tuple[Column, str]] = [
        (_corrupt(df), "malformed_line"),
        (~_present(F.col(items.id)), "missing_id"),
        (F.length(_id(F.col(items.id))) > checks.max_id_length, "id_too_long"),
        (~_present(F.col(items.title)), "missing_title")]
    for facet in schema.facets:
        if facet.column not in df.columns:
            out.append(F.lit(None).cast(_spark_type(facet)).alias(facet.name))
            continue
        value = _facet_value(df, facet)
        out.append(value.alias(facet.name))
        if facet.type not in ("keyword", "keyword_list"):
            reasons.append((_present(F.col(facet.column)) & value.isNull(), f"unparseable:{facet.name}"))
        if facet.range:
            low, high = facet.range
            outside = (F.lit(False) if low is None else value < low) | (F.lit(False) if high is None else value > high)
            reasons.append((value.isNotNull() & outside, f"out_of_range:{facet.name}"))
    checked = df.select(*out, _first_reason(*reasons).alias(REJECTED), F.col(ORDER), _raw_json(df).alias("_raw"))
    first = Window.partitionBy("item_id").orderBy(ORDER)
    ranked = checked.withColumn("_n", F.when(F.col(REJECTED).isNull(), F.row_number().over(first)))
    return ranked.withColumn(REJECTED, F.when((F.col("_n") > 1), F.lit("duplicate_id")).otherwise(F.col(REJECTED))) \
        .drop("_n")


def event_frame(df: DataFrame, schema: CatalogSchema, now_ts: float) -> DataFrame:
    """The events with ``user_id``, ``item_id``, ``event_type`` and ``timestamp`` (epoch seconds);
    ``_rejected`` says why a row is dropped; ``_filtered`` marks an event of a type the schema does not
    keep (left out, not an error)."""
    ev, checks = schema.events, schema.checks
    dtype = df.schema[ev.time].dataType
    ts = epoch_seconds(F.col(ev.time), ev.time_format, dtype)
    kind = F.col(ev.type).cast("string") if ev.type and ev.type in df.columns else F.lit(None).cast("string")
    reasons = [(_corrupt(df), "malformed_line"),
               (~_present(F.col(ev.user)), "missing_user"), (~_present(F.col(ev.item)), "missing_item"),
               (~_present(F.col(ev.time)), "missing_time"),
               ((F.length(_id(F.col(ev.user))) > checks.max_id_length)
                | (F.length(_id(F.col(ev.item))) > checks.max_id_length), "id_too_long"),
               (ts.isNull(), "unparseable_time"), (ts > F.lit(now_ts), "future_time")]
    kept = kind.isin(list(ev.keep)) if ev.keep else F.lit(True)
    return df.select(_id(F.col(ev.user)).alias("user_id"), _id(F.col(ev.item)).alias("item_id"),
                     F.coalesce(kind, F.lit("")).alias("event_type"), ts.alias("timestamp"),
                     _first_reason(*reasons).alias(REJECTED), (~F.coalesce(kept, F.lit(False))).alias("_filtered"),
                     _raw_json(df).alias("_raw"))


def user_frame(df: DataFrame, schema: CatalogSchema) -> DataFrame:
    """The user table with ``user_id`` and the schema's feature columns (as text)."""
    users, checks = schema.users, schema.checks
    first = Window.partitionBy("user_id").orderBy(ORDER)
    checked = df.withColumn(ORDER, F.monotonically_increasing_id()).select(
        _id(F.col(users.id)).alias("user_id"), *(F.col(c).cast("string").alias(c) for c in users.features),
        _first_reason((_corrupt(df), "malformed_line"), (~_present(F.col(users.id)), "missing_id"),
                      (F.length(_id(F.col(users.id))) > checks.max_id_length, "id_too_long")).alias(REJECTED),
        F.col(ORDER), _raw_json(df).alias("_raw"))
    ranked = checked.withColumn("_n", F.when(F.col(REJECTED).isNull(), F.row_number().over(first)))
    return ranked.withColumn(REJECTED, F.when(F.col("_n") > 1, F.lit("duplicate_id")).otherwise(F.col(REJECTED))) \
        .drop("_n", ORDER)


def _corrupt(df: DataFrame) -> Column:
    return F.col(CORRUPT).isNotNull() if CORRUPT in df.columns else F.lit(False)


def _raw_json(df: DataFrame) -> Column:
    """The input row as JSON (what a rejected row's sample shows)."""
    return F.to_json(F.struct(*[F.col(c) for c in df.columns if c != ORDER]))


def _spark_type(facet: Facet) -> str:
    return {"keyword": "string", "keyword_list": "array<string>", "integer": "long", "float": "double",
            "date": "string", "boolean": "boolean"}[facet.type]


def catalog_columns(schema: CatalogSchema) -> dict[str, str]:
    """The catalog's input columns and what each must hold (``check_columns``)."""
    out = {schema.items.id: "text", schema.items.title: "text"}
    out.update({f.column: f.type for f in schema.facets})
    return out


def event_columns(schema: CatalogSchema) -> dict[str, str]:
    ev = schema.events
    out = {ev.user: "text", ev.item: "text", ev.time: f"time:{ev.time_format}"}
    if ev.type:
        out[ev.type] = "text"
    return out


def user_columns(schema: CatalogSchema) -> dict[str, str]:
    return {schema.users.id: "text", **{c: "text" for c in schema.users.features}}


# ---- counting what was dropped ---------------------------------------------------------------------

class Rejections:
    """Rejected rows per input and reason: counted, sampled beside the report, checked against the
    schema's ``max_rejected_share``."""

    def __init__(self, out_dir: Path, schema: CatalogSchema):
        self.dir, self.schema = Path(out_dir) / "rejected", schema
        self.counts: dict[str, dict[str, Any]] = {}

    def record(self, what: str, df: DataFrame) -> dict[str, Any]:
        """Count ``df``'s rows and its rejected rows per reason (one job), write up to ``sample_rows``
        of each reason to ``rejected/<what>/<reason>.jsonl``; returns the input's counts."""
        per_reason = {r["reason"]: int(r["n"]) for r in df.groupBy(F.coalesce(F.col(REJECTED), F.lit("")).alias("reason"))
                      .agg(F.count("*").alias("n")).collect()}
        total = sum(per_reason.values())
        reasons = {r: n for r, n in sorted(per_reason.items()) if r}
        rejected = sum(reasons.values())
        entry = {"read": total, "rejected": rejected, "reasons": reasons,
                 "share": round(rejected / total, 6) if total else 0.0}
        self.counts[what] = entry
        if reasons and self.schema.checks.sample_rows:
            rank = Window.partitionBy(REJECTED).orderBy(F.col("_raw"))
            samples = (df.where(F.col(REJECTED).isNotNull()).withColumn("_k", F.row_number().over(rank))
                       .where(F.col("_k") <= self.schema.checks.sample_rows).select(REJECTED, "_raw").collect())
            folder = self.dir / what
            folder.mkdir(parents=True, exist_ok=True)
            by_reason: dict[str, list[str]] = {}
            for row in samples:
                by_reason.setdefault(row[REJECTED], []).append(row["_raw"])
            for reason, lines in by_reason.items():
                (folder / f"{reason.replace(':', '-')}.jsonl").write_text("\n".join(lines) + "\n")
        return entry

    def check(self) -> None:
        """Fail the run (DatasetError) when an input's rejected share is above the schema's limit."""
        limit = self.schema.checks.max_rejected_share
        for what, entry in self.counts.items():
            if entry["share"] > limit:
                top = ", ".join(f"{r}: {n}" for r, n in sorted(entry["reasons"].items(), key=lambda kv: -kv[1])[:5])
                raise DatasetError(f"{entry['rejected']} of {entry['read']} {what} rows were rejected "
                                   f"({entry['share']:.2%}, above max_rejected_share {limit:.2%} of the catalog "
                                   f"schema): {top}; samples in {self.dir / what}. Nothing was published.")

    def summary(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.counts))
