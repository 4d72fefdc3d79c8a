"""A catalog no code of facetrec knows (tests/bookstore.py: its own column names, a CSV catalog, JSON
lines of events with ISO times and three event kinds, a boolean, a float, a list, a date, bad rows of
each kind), run through the whole pipeline (ETL, training, evaluation, embedding, publish) and the
service on the real node, as `facetrec pipeline run --catalog-config ...` runs it. Then the next
nightly run adds a facet, and a rollback returns to the pair made with the old schema."""

from __future__ import annotations

import shutil

import pytest
import yaml
from bookstore import BAD_CATALOG, BAD_EVENTS, write_bookstore
from browser_support import serve, start_browser, wait_for_rows
from fuzz_support import assert_clean, fuzz
from openapi_check import assert_valid_exchange

from app import create_app
from facetrec.catalog.rows import RowCatalog
from facetrec.catalog.schema import CatalogSchema
from ingest import pipeline
from ingest.indexing.generations import Generations

pytestmark = pytest.mark.slow
MODEL = {"dim": 32, "hidden": 64, "layers": 1, "max_len": 20, "dropout": 0.1}
TRAIN = {"epochs": 12, "patience": 12, "seed": 1, "lr": 5e-3}


@pytest.fixture(scope="module")
def bookstore(es, es_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("bookstore")
    files = write_bookstore(root / "export")
    prefix = f"books-{root.name[-6:].lower()}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="flat", vector_dims=MODEL["dim"], models_root=root / "models",
                                   rows_config=files["rows"], es_request_timeout_s=5.0)
    work = root / "run"
    summary = pipeline.run_pipeline(None, work, settings, catalog_config=files["catalog_config"],
                                    events=files["events"], catalog=files["catalog"], users=files["users"],
                                    model_overrides=MODEL, train_overrides=TRAIN, generation="20260301-000001",
                                    progress=False, log=lambda *_: None)
    yield settings, files, work, summary
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


@pytest.fixture(scope="module")
def client(bookstore):
    settings, *_ = bookstore
    return create_app(settings).test_client()


def test_the_etl_read_the_export_as_its_schema_says_and_counted_every_bad_row(bookstore):
    _, files, work, summary = bookstore
    report = summary["etl"]
    assert report["rejected"]["catalog"]["reasons"] == BAD_CATALOG
    assert report["rejected"]["events"]["reasons"] == BAD_EVENTS
    assert report["events_filtered_by_type"] == files["kinds"]["wishlist"]     # a kind the schema does not keep
    assert report["items"] == len(files["items"])
    samples = work / "etl" / "rejected"
    assert "n/a" in (samples / "catalog" / "unparseable-price.jsonl").read_text()
    assert "yesterday" in (samples / "events" / "unparseable_time.jsonl").read_text()
    assert summary["publish"]["status"] == "swapped"


def test_the_model_beats_popularity_on_validation(bookstore):
    _, _, work, _ = bookstore
    results = pipeline.step_evaluate(work, "valid")
    # Seconds of training on 500 readers: the towers learn the planted tastes (above popularity), and
    # the ranked row the service serves (towers + ranker) is well above it.
    assert results["two-tower"]["HR@10"] > results["MostPop"]["HR@10"], results
    assert results["two-tower"]["NDCG@10"] > results["MostPop"]["NDCG@10"], results
    assert results["two-tower+ranker"]["HR@10"] > 1.5 * results["MostPop"]["HR@10"], results


def test_rows_filter_on_a_price_range_a_boolean_and_a_tag_under_the_user_filter(client, bookstore):
    _, files, *_ = bookstore
    by_sku = {i["sku"]: i for i in files["items"]}
    page = assert_valid_exchange(client.get("/v1/users/c00007/homepage?language=fr"), 200)
    rows = {r["id"]: r for r in page["rows"]}
    assert page["user_generation"] and all(r["source"] == "personalized" for r in rows.values())
    assert all(rows[r]["items"] for r in rows), {r: len(rows[r]["items"]) for r in rows}
    for row in rows.values():
        for item in row["items"]:
            source = by_sku[item["id"]]
            assert item["language"] == "fr" == source["language"]
            assert set(item) == {"id", "score", "title", "url", "format", "language", "price", "in_stock", "tags",
                                 "author", "released"}
    assert all(item["price"] <= 15 for item in rows["under_15"]["items"])
    assert all(item["in_stock"] is True for item in rows["in_stock_now"]["items"])
    assert all("fantasy" in item["tags"] for item in rows["fantasy"]["items"])
    assert all(item["format"] == "audiobook" and item["in_stock"] for item in rows["audiobooks"]["items"])
    assert rows["for_you"].get("ranked") and page["ranker"]["status"] == "applied"


def test_ad_hoc_rows_take_the_catalog_s_types_and_refuse_what_it_lacks(client):
    body = {"rows": [{"id": "cheap_crime", "ad_hoc": True, "filter": [{"term": {"tags": "crime"}},
                                                                   {"range": {"price": {"gte": 5, "lt": 20}}},
                                                                   {"term": {"in_stock": True}}]}]}
    row = assert_valid_exchange(client.post("/v1/users/c00009/rows", json=body), 200)["rows"][0]
    assert row["items"] and all("crime" in i["tags"] and 5 <= i["price"] < 20 and i["in_stock"] for i in row["items"])
    for clause, field in (({"term": {"in_stock": "yes"}}, "rows[0].filter.in_stock"),
                          ({"term": {"item_format": "ebook"}}, "rows[0].filter.item_format"),
                          ({"range": {"tags": {"gte": "a"}}}, "rows[0].filter.tags")):
        response = client.post("/v1/users/c00009/rows", json={"rows": [{"id": "x", "ad_hoc": True, "filter": [clause]}]})
        assert response.status_code == 400 and response.json["error"]["field"] == field, response.json


def test_facets_and_the_served_api_describe_this_catalog(client, bookstore):
    _, files, *_ = bookstore
    body = assert_valid_exchange(client.get("/v1/facets"), 200)
    facets = body["facets"]
    assert body["catalog"] == "bookstore"
    assert list(facets) == ["format", "language", "price", "in_stock", "tags", "author", "released"]
    assert {v["value"] for v in facets["in_stock"]["values"]} == {True, False}
    assert facets["language"]["user_filter"] and not facets["format"]["user_filter"]
    prices = [i["price"] for i in files["items"]]
    assert facets["price"]["min"] == pytest.approx(min(prices)) and facets["price"]["max"] == pytest.approx(max(prices))
    document = yaml.safe_load(client.get("/openapi.yaml").data)
    parameters = {p["name"]: p for p in document["paths"]["/v1/users/{user_id}/homepage"]["get"]["parameters"]}
    assert parameters["language"]["schema"]["enum"] == ["en", "fr", "de"]
    term = document["components"]["schemas"]["Clause"]["oneOf"][0]["properties"]["term"]["properties"]
    assert term["in_stock"] == {"type": "boolean"} and term["price"]["type"] == "number"
    assert "item_format" not in term
    assert "**This service runs the catalog `bookstore`**" in document["info"]["description"]


def test_the_page_shows_the_bookstore_s_own_fields_and_user_filter(bookstore, tmp_path_factory):
    """The same page (app/templates/homepage.html names no facet): the bookstore's rows, its language
    select with the live values, cards with its own fields, titles linking to the items' URLs."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    settings, files, *_ = bookstore
    by_name = {i["name"]: i for i in files["items"]}
    browser = start_browser(tmp_path_factory)
    httpd, url = serve(settings, RowCatalog.from_settings(settings))
    try:
        browser.get(url + "/")
        sections = wait_for_rows(browser, 5)
        titles = [browser.execute_script("return arguments[0].firstChild.textContent", s.find_element(By.TAG_NAME, "h2"))
                  for s in sections]   # the heading's own text, before its meta span
        assert titles == [
            "Picked for you", "Under 15", "In stock now", "Fantasy for you", "Audiobooks"]
        language = Select(browser.find_element(By.CSS_SELECTOR, 'select.filter[data-name="language"]'))
        assert [o.text for o in language.options] == ["any", "en", "fr", "de"]
        language.select_by_visible_text("de")
        browser.find_element(By.ID, "show").click()
        WebDriverWait(browser, 20).until(lambda d: "generation" in d.find_element(By.ID, "status").text)
        sections = wait_for_rows(browser, 5)
        card = sections[1].find_elements(By.CSS_SELECTOR, ".card")[0]
        book = by_name[card.find_element(By.CSS_SELECTOR, ".title").text]
        assert book["language"] == "de" and book["price"] <= 15
        assert card.find_element(By.TAG_NAME, "a").get_attribute("href") == book["link"]
        facets = card.find_element(By.CSS_SELECTOR, ".facets").text
        assert book["author"] in facets and book["format"] in facets and str(book["price"]) in facets
    finally:
        httpd.shutdown()
        browser.quit()


def test_the_fuzzer_finds_no_valid_request_refused_and_no_server_error_on_the_bookstore(client):
    """The schema-driven fuzzer (tests/fuzz_support.py) against the bookstore's service: a float, a
    boolean and a date facet in its clauses, its own item fields in every answer."""
    assert_clean(fuzz(client.application))


def test_the_next_run_adds_a_facet_and_a_rollback_serves_the_old_schema(es, bookstore, tmp_path):
    settings, files, work, _ = bookstore
    schema = yaml.safe_load(files["catalog_config"].read_text())
    schema["items"]["facets"]["pages"] = {"type": "integer"}
    new_config = tmp_path / "catalog.yaml"
    new_config.write_text(yaml.safe_dump(schema))
    shutil.copy(files["rows"], tmp_path / "rows.yaml")
    lines = files["catalog"].read_text().splitlines()
    with_pages = [lines[0] + ",pages"] + [f"{line},{100 + n}" for n, line in enumerate(lines[1:])]
    (tmp_path / "catalog.csv").write_text("\n".join(with_pages) + "\n")
    pipeline.step_inputs(work, new_config, files["events"], tmp_path / "catalog.csv", files["users"])
    pipeline.step_etl(work)
    pipeline.step_embed(work, progress=False)
    pipeline.step_publish(work, settings, tmp_path / "rows.yaml", generation="20260302-000001", progress=False)

    gens = Generations(es, settings)
    assert gens.live_index("item").endswith("20260302-000001")
    assert es.indices.get_mapping(index=gens.live_index("item"))[gens.live_index("item")]["mappings"]["properties"][
        "pages"] == {"type": "long"}
    served = create_app(settings).test_client()
    assert "pages" in served.get("/v1/facets").json["facets"]
    row = {"rows": [{"id": "long_reads", "ad_hoc": True, "filter": [{"range": {"pages": {"gte": 1000}}}]}]}
    assert all(i["pages"] >= 1000 for i in served.post("/v1/users/c00003/rows", json=row).json["rows"][0]["items"])

    gens.rollback()
    assert gens.live_index("item").endswith("20260301-000001")
    rolled = create_app(settings).test_client()   # a new process, or the next alias re-check of a running one
    assert "pages" not in rolled.get("/v1/facets").json["facets"]
    refused = rolled.post("/v1/users/c00003/rows", json=row)
    assert refused.status_code == 400 and refused.json["error"]["field"] == "rows[0].filter.pages"
    assert CatalogSchema.from_dict(schema).facet("pages") is not None
    with pytest.raises(Exception, match="the row config cannot be served by the live generation"):
        create_app(settings, RowCatalog.from_dict({"rows": [{"id": "r", "filter": [{"range": {"pages": {"gte": 1}}}]}]},
                                                  CatalogSchema.from_dict(schema)))
