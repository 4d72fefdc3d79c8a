"""A catalog's inputs as the ETL reads them (ingest.embedding.inputs) on tiny files and frames: the
format from the name, checks that fail before any work naming column, type and value, every bad row
dropped with its reason, and the catalog schema file's own checks (facetrec.catalog.schema)."""

from __future__ import annotations

import json

import pytest

from facetrec.catalog.schema import CatalogSchema, SchemaError
from ingest.embedding import inputs
from ingest.embedding.datasets import DatasetError

BOOKS = CatalogSchema.from_dict({
    "name": "books",
    "items": {"id": "sku", "title": "name", "facets": {
        "format": {"type": "keyword", "feature": True},
        "price": {"type": "float", "range": [0, 1000]},
        "pages": {"type": "integer"},
        "in_stock": {"type": "boolean"},
        "tags": {"type": "keyword_list", "separator": "|"},
        "released": {"type": "date", "column": "release_date"}}},
    "events": {"user": "customer", "item": "sku", "time": {"column": "at", "format": "iso8601"},
               "type": {"column": "kind", "keep": ["purchase", "view"]}},
    "checks": {"max_id_length": 8}})


def test_the_format_comes_from_the_name_or_the_folder(tmp_path):
    assert inputs.input_format("s3a://bucket/events/*.parquet") == "parquet"
    assert inputs.input_format("/data/catalog.csv") == "csv"
    assert inputs.input_format("events.jsonl") == "json"
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("{}\n")
    (folder / "_SUCCESS").write_text("")
    assert inputs.input_format(str(folder)) == "json"
    (folder / "part-1.csv").write_text("a\n")
    with pytest.raises(DatasetError, match="several formats"):
        inputs.input_format(str(folder))
    with pytest.raises(DatasetError, match="cannot tell its format"):
        inputs.input_format(str(tmp_path / "events.txt"))


def test_csv_catalog_rows_are_cast_to_their_types_and_bad_ones_named(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("sku,name,format,price,pages,in_stock,tags,release_date\n"
                    "b1,Dune,paperback,9.5,412,true,scifi|classic,1965-08-01\n"
                    "b2,Emma,ebook,cheap,300,false,,1815-12-23\n"          # an unparseable price
                    "b3,Ulysses,ebook,2000,730,true,classic,1922-02-02\n"   # a price out of range
                    "b1,Dune again,ebook,1,1,true,,2000-01-01\n"           # a duplicate id: the first is kept
                    ",Nameless,ebook,1,1,true,,2000-01-01\n"
                    "b-too-long-id,X,ebook,1,1,true,,2000-01-01\n"
                    "b4,,ebook,1,1,yes,a| b |a,2001-01-01T10:00:00Z\n"     # no title
                    "b5,Ok,ebook,,12.5,nope,x,not-a-date\n")              # pages, in_stock and the date
    df = inputs.read_input(spark, path)
    inputs.check_columns(df, inputs.catalog_columns(BOOKS), "the catalog")
    rows = {(r.item_id, r.title): r for r in inputs.catalog_frame(df, BOOKS).collect()}
    good = rows[("b1", "Dune")]
    assert good._rejected is None and good.price == 9.5 and good.pages == 412 and good.in_stock is True
    assert good.tags == ["scifi", "classic"] and good.released == "1965-08-01" and good.format == "paperback"
    assert {key: r._rejected for key, r in rows.items() if r._rejected} == {
        ("b2", "Emma"): "unparseable:price", ("b3", "Ulysses"): "out_of_range:price",
        ("b1", "Dune again"): "duplicate_id", (None, "Nameless"): "missing_id", ("b-too-long-id", "X"): "id_too_long",
        ("b4", None): "missing_title", ("b5", "Ok"): "unparseable:pages"}
    assert rows[("b4", None)].tags == ["a", "b"]   # trimmed, distinct


def test_a_column_of_the_wrong_type_fails_before_any_work_naming_column_type_and_value(spark, tmp_path):
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        {"sku": "b1", "name": "A", "format": "x", "price": "free", "pages": 1, "in_stock": True, "tags": ["a"],
         "release_date": "2001-01-01"},
        {"sku": "b2", "name": "B", "format": "x", "price": "gratis", "pages": 2, "in_stock": False, "tags": [],
         "release_date": "2001-01-01"})) + "\n")
    df = inputs.read_input(spark, path)
    with pytest.raises(DatasetError, match=r"column 'price' should hold float, it holds string values such as 'free'"):
        inputs.check_columns(df, inputs.catalog_columns(BOOKS), "the catalog")
    missing = spark.createDataFrame([("b1", "A")], "sku string, title string")
    with pytest.raises(DatasetError, match=r"has no column 'name' \(the catalog schema names it\); its columns are "
                                           r"\['sku', 'title'\]"):
        inputs.check_columns(missing, inputs.catalog_columns(BOOKS), "the catalog")
    nested = spark.createDataFrame([("b1", "A", [1.0])], "sku string, name string, price array<double>")
    with pytest.raises(DatasetError, match="column 'price' should hold float, it holds array<double>"):
        inputs.check_columns(nested, {"price": "float"}, "the catalog")


def test_events_parse_their_declared_time_format_keep_their_types_and_name_what_they_drop(spark, tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [{"customer": "c1", "sku": "b1", "at": "2026-01-01T10:00:00.250+01:00", "kind": "purchase"},
             {"customer": "c1", "sku": "b2", "at": "yesterday", "kind": "view"},
             {"customer": "c1", "sku": "b3", "at": "2999-01-01T00:00:00Z", "kind": "view"},
             {"customer": "c1", "sku": "b4", "at": "2026-01-01T10:00:00Z", "kind": "wishlist"},
             {"customer": None, "sku": "b4", "at": "2026-01-01T10:00:00Z", "kind": "view"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    df = inputs.read_input(spark, path)
    inputs.check_columns(df, inputs.event_columns(BOOKS), "the events")
    rows = inputs.event_frame(df, BOOKS, now_ts=1_900_000_000).collect()
    by_item = {r.item_id: r for r in rows if r.user_id}
    assert by_item["b1"].timestamp == pytest.approx(1767258000.25) and by_item["b1"]._rejected is None
    assert by_item["b2"]._rejected == "unparseable_time" and by_item["b3"]._rejected == "future_time"
    assert by_item["b4"]._filtered and by_item["b4"]._rejected is None   # a kind the schema does not keep
    assert sorted(r._rejected for r in rows if not r.user_id) == ["malformed_line", "missing_user"]


def test_epoch_times_in_seconds_and_milliseconds(spark):
    df = spark.createDataFrame([("u", "i", 1_700_000_000_123)], "user_id string, item_id string, ts long")
    schema = CatalogSchema.from_dict({"name": "s", "items": {}, "events": {"time": {"column": "ts",
                                                                                      "format": "epoch_ms"}}})
    assert inputs.event_frame(df, schema, now_ts=2e9).first().timestamp == pytest.approx(1_700_000_000.123)


def test_rejections_are_counted_sampled_and_held_to_the_schema_s_share(spark, tmp_path):
    df = spark.createDataFrame([("a", None, "{}"), ("b", "unknown_item", '{"x": 1}'), ("c", "unknown_item", '{"x": 2}'),
                                ("d", "missing_id", '{"y": 1}')], "k string, _rejected string, _raw string")
    rejections = inputs.Rejections(tmp_path, BOOKS)
    assert rejections.record("events", df) == {"read": 4, "rejected": 3, "share": 0.75,
                                               "reasons": {"missing_id": 1, "unknown_item": 2}}
    assert (tmp_path / "rejected" / "events" / "unknown_item.jsonl").read_text().splitlines() == ['{"x": 1}',
                                                                                                 '{"x": 2}']
    with pytest.raises(DatasetError, match=r"3 of 4 events rows were rejected \(75.00%.*unknown_item: 2, "
                                           r"missing_id: 1"):
        rejections.check()


@pytest.mark.parametrize("change, message", [
    ({"items": {"facets": {"price": {"type": "money"}}}}, r"items.facets.price.type: one of"),
    ({"items": {"facets": {"Price": "float"}}}, r"a facet name is 1-64 of a-z"),
    ({"items": {"facets": {"popularity": "float"}}}, r"not one of \['item_id'"),
    ({"items": {"facets": {"price": {"type": "float", "partition": True}}}}, r"only keyword facets get a vector graph"),
    ({"items": {"facets": {"price": {"type": "float", "user_filter": True}}}}, r"a user filter is a keyword"),
    ({"items": {"facets": {"tags": {"type": "keyword", "separator": "|"}}}}, r"separator: one character, for a keyword_list"),
    ({"items": {"facets": {"price": {"type": "float", "range": [5, 1]}}}}, r"range: \[low, high\]"),
    ({"items": {"categories": "price", "facets": {"price": "float"}}}, r"must be a keyword or keyword_list facet"),
    ({"events": {"time": {"column": "at", "format": "rfc2822"}}}, r"events.time.format: one of"),
    ({"checks": {"max_rejected_share": 2}}, r"max_rejected_share: a share in 0..1"),
    ({"colour": "blue"}, r"unknown entry 'colour'"),
])
def test_the_schema_file_is_refused_with_the_entry_that_is_wrong(change, message):
    raw = {"name": "books", "items": {"facets": {}}}
    for key, value in change.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key in raw else value
    with pytest.raises(SchemaError, match=message):
        CatalogSchema.from_dict(raw)


def test_the_schema_round_trips_and_derives_the_mapping_and_the_fields():
    again = CatalogSchema.from_dict(BOOKS.to_dict())
    assert again.to_dict() == BOOKS.to_dict()
    assert BOOKS.item_properties()["in_stock"] == {"type": "boolean"}
    assert BOOKS.item_properties()["pages"] == {"type": "long"}
    assert BOOKS.facet_types["tags"] == "keyword_list" and BOOKS.feature_facets[0].name == "format"
    assert BOOKS.source_fields == ["item_id", "title", "format", "price", "pages", "in_stock", "tags", "released",
                                   "popularity", "generation"]
