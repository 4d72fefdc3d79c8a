"""What the API says it accepts (issue 23): the row catalog and the live facet values, the value
matching rules, explicit ad-hoc rows, one validation of every parameter, the 413's limit, the
served OpenAPI document, and real responses (errors included) validated against that document,
whose every example names its catalog and works on it."""

from __future__ import annotations

import os
from collections import Counter
from urllib.parse import quote

import pytest
import yaml
from openapi_check import SPEC, assert_valid_exchange

from app import MAX_BODY_BYTES, create_app
from facetrec.catalog.facets import FacetCache, spelling_hint
from facetrec.catalog.rows import RowCatalog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client(published):
    settings, catalog, *_ = published
    return create_app(settings.replace(es_request_timeout_s=5.0), catalog).test_client()


@pytest.fixture(scope="module")
def catalogs(movielens, events_pair):
    """Both catalogs the examples name, each with a service (and an exported user encoder)."""
    ml_settings, ml_catalog, *_ = movielens
    syn_settings, syn_catalog, *_ = events_pair
    return {"movielens": create_app(ml_settings.replace(es_request_timeout_s=5.0), ml_catalog).test_client(),
            "synthetic": create_app(syn_settings.replace(es_request_timeout_s=5.0), syn_catalog).test_client()}


# ---- GET /v1/rows and /v1/facets -------------------------------------------------------------------

def test_the_row_catalog_lists_filters_sizes_modes_and_the_live_facet_values(client, published):
    settings, catalog, items, *_ = published
    body = assert_valid_exchange(client.get("/v1/rows"), 200)
    assert body["homepage"] == list(catalog.homepage) and body["user_filters"] == ["language", "country"]
    assert body["default_mode"] == "knn" and body["homepage_modes"] == ["knn"]
    rows = {r["id"]: r for r in body["rows"]}
    assert list(rows) == list(catalog.rows)
    assert rows["podcasts"]["modes"] == ["knn", "script_score"] and rows["for_you"]["modes"] == ["knn"]
    assert rows["for_you"]["size"] == 10 and rows["for_you"]["max_size"] == 20
    assert rows["comedy"]["filter"] == [{"term": {"categories": "comedy"}}]
    assert rows["comedy"]["must_not"] == [{"term": {"item_format": "document"}}] and rows["comedy"]["exact"]
    assert rows["across_categories"]["on_homepage"] is False and rows["across_categories"]["diversity"]
    assert body["item_generation"] == f"{settings.item_alias}-20260101-000001"
    assert "case-sensitively" in body["value_matching"]

    facets = body["facets"]
    assert body["catalog"] == "synthetic"
    assert list(facets) == list(catalog.facets) == ["item_format", "language", "country", "categories", "published_at"]
    for name, kind in (("item_format", "keyword"), ("language", "keyword"), ("categories", "keyword_list"),
                       ("country", "keyword_list")):
        values = [items_value for item in items for items_value in
                  (item[name] if isinstance(item[name], list) else [item[name]])]
        expected = sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))
        assert [(v["value"], v["count"]) for v in facets[name]["values"]] == expected, name
        assert facets[name]["complete"] and facets[name]["type"] == kind
    assert facets["language"]["user_filter"] and not facets["item_format"]["user_filter"]
    assert facets["published_at"] == {"type": "date", "user_filter": False,
                                      "min": min(i["published_at"] for i in items),
                                      "max": max(i["published_at"] for i in items)}
    assert assert_valid_exchange(client.get("/v1/facets"), 200)["facets"] == facets


def test_facet_values_are_read_once_per_generation_and_follow_a_swap(es, es_settings, unique):
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="flat", lock_lease_s=10.0)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    items, users, *_ = embedding_records(n_items=300, n_users=10, dims=64, seed=5)
    run_reindex(es, settings, catalog, items=items, users=users, model_version="m", generation="20260101-000001",
                progress=False, sample_users=3)
    now = [0.0]
    cache = FacetCache(es, settings.item_alias, catalog, recheck_s=5.0, clock=lambda: now[0])
    first = cache.get()
    assert first.item_index == f"{settings.item_alias}-20260101-000001"
    assert cache.get() is first                       # cached: no second aggregation
    assert first.known_values("language") and "pt" not in first.known_values("item_format")

    # The next generation: every item is Portuguese.
    run_reindex(es, settings, catalog, items=[{**i, "language": "pt"} for i in items], users=users,
                model_version="m", generation="20260101-000002", progress=False, sample_users=3)
    assert cache.get() is first                       # within ALIAS_RECHECK_S of the last look
    now[0] += 5.0
    second = cache.get()
    assert second.item_index == f"{settings.item_alias}-20260101-000002"
    assert second.facets["language"]["values"] == [{"value": "pt", "count": 300}]
    now[0] += 5.0
    assert cache.get() is second                      # the alias did not move: the same summary


# ---- value matching ---------------------------------------------------------------------------------

def test_spelling_hints_only_for_case_variants_of_a_complete_list():
    assert spelling_hint("comedy", ["Comedy", "Drama"]) == "Comedy"
    assert spelling_hint("COMEDY", ["Comedy"]) == "Comedy"
    assert spelling_hint("Comedy", ["Comedy"]) is None         # listed: fine
    assert spelling_hint("western", ["Comedy"]) is None        # unknown: matches nothing, no hint
    assert spelling_hint("comedy", None) is None               # the list is not complete: cannot tell


@pytest.mark.parametrize("request_args, field, listed", [
    (("GET", "/v1/users/u1/homepage?language=EN"), "filters.language", "en"),
    (("POST", "/v1/users/u1/rows", {"filters": {"country": ["US", "gb"]}}), "filters.country", "GB"),
    (("POST", "/v1/users/u1/rows", {"rows": [{"id": "mine", "ad_hoc": True,
                                              "filter": [{"term": {"categories": "Comedy"}}]}]}),
     "rows[0].filter.categories", "comedy"),
    (("POST", "/v1/users/u1/rows", {"rows": [{"id": "mine", "ad_hoc": True,
                                              "must_not": [{"terms": {"item_format": ["podcast", "Ebook"]}}]}]}),
     "rows[0].must_not.item_format", "ebook"),
])
def test_a_value_that_differs_only_by_case_is_a_400_naming_the_field_and_the_listed_spelling(
        client, request_args, field, listed):
    method, path, *body = request_args
    response = client.open(path, method=method, json=body[0] if body else None)
    error = assert_valid_exchange(response, 400)["error"]
    assert error["field"] == field and f"did you mean {listed!r}" in error["message"], error


def test_values_match_exactly_and_an_unknown_value_matches_nothing(client, published):
    _, _, items, users, *_ = published
    user = users[2]["user_id"]
    exact = assert_valid_exchange(client.get(f"/v1/users/{user}/homepage?language=de&rows=for_you"), 200)
    by_id = {i["item_id"]: i for i in items}
    assert exact["rows"][0]["items"] and all(by_id[i["id"]]["language"] == "de" for i in exact["rows"][0]["items"])
    unknown = assert_valid_exchange(client.get(f"/v1/users/{user}/homepage?language=tlh&rows=for_you"), 200)
    assert unknown["rows"][0]["items"] == []


# ---- ad-hoc rows ------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, field, words", [
    ({"id": "comedy", "ad_hoc": True, "filter": [{"term": {"categories": "comedy"}}]}, "rows[0].id", "configured row"),
    ({"id": "mine", "filter": [{"term": {"categories": "comedy"}}]}, "rows[0].filter", '"ad_hoc": true'),
    ({"id": "comedy", "title": "Renamed"}, "rows[0].title", '"ad_hoc": true'),
    ({"id": "mine"}, "rows[0].id", '"ad_hoc": true'),
    ({"id": "mine", "ad_hoc": "yes"}, "rows[0].ad_hoc", "true"),
    ({"id": "mine", "ad_hoc": True, "retrieval": "knn"}, "rows[0].retrieval", "unknown row field"),
])
def test_ad_hoc_rows_say_so_and_cannot_shadow_a_configured_row(client, row, field, words):
    error = assert_valid_exchange(client.post("/v1/users/u1/rows", json={"rows": [row]}), 400)["error"]
    assert error["field"] == field and words in error["message"], error


def test_a_configured_row_by_object_and_an_ad_hoc_row_are_served_as_asked(client, published):
    _, catalog, items, users, *_ = published
    by_id = {i["item_id"]: i for i in items}
    body = {"rows": [{"id": "comedy", "size": 5, "ad_hoc": False}, {"id": "everything", "ad_hoc": True, "size": 3},
                     {"id": "mine", "ad_hoc": True, "title": "Travel", "filter": [{"term": {"categories": "travel"}}]}]}
    page = assert_valid_exchange(client.post(f"/v1/users/{users[1]['user_id']}/rows", json=body), 200)
    comedy, everything, mine = page["rows"]
    assert comedy["title"] == catalog.rows["comedy"].title and len(comedy["items"]) == 5
    assert all("comedy" in by_id[i["id"]]["categories"] for i in comedy["items"])
    assert len(everything["items"]) == 3
    assert mine["title"] == "Travel" and len(mine["items"]) == 10
    assert all("travel" in by_id[i["id"]]["categories"] for i in mine["items"])


def test_an_ad_hoc_row_asked_in_another_mode_is_told_why(client):
    body = {"rows": [{"id": "mine", "ad_hoc": True, "filter": [{"term": {"item_format": "podcast"}}]}],
            "mode": "script_score"}
    error = assert_valid_exchange(client.post("/v1/users/u1/rows", json=body), 400)["error"]
    assert error["field"] == "mode" and "ad-hoc row 'mine'" in error["message"] and "'knn'" in error["message"]
    assert "its config" not in error["message"]


# ---- every parameter validated the same way -----------------------------------------------------

@pytest.mark.parametrize("url, field", [
    ("/v1/sample-users?limit=0", "limit"),
    ("/v1/sample-users?limit=1000", "limit"),
    ("/v1/sample-users?limit=101", "limit"),
    ("/v1/sample-users?limit=x", "limit"),
    ("/v1/sample-users?limit=-1", "limit"),
    ("/v1/sample-users?limit=", "limit"),
    ("/v1/sample-users?limit=%D9%A3", "limit"),          # an Arabic-Indic digit: isdigit() but not ASCII
    ("/v1/sample-users?limit=2&limit=3", "limit"),
    ("/v1/sample-users?colour=red", "colour"),
    ("/v1/users/u1/homepage?rows=for_you&rows=ebooks", "rows"),
    ("/v1/users/u1/homepage?language=en&language=es", "language"),
    ("/v1/users/u1/homepage?size=5&size=5", "size"),
    ("/v1/users/u1/homepage?size=%D9%A3", "size"),
    ("/v1/rows?verbose=1", "verbose"),
    ("/v1/facets?language=en", "language"),
])
def test_every_query_parameter_is_validated_the_same_way(client, url, field):
    error = assert_valid_exchange(client.get(url), 400)["error"]
    assert error["field"] == field and error["code"] == "bad_request", error


def test_a_repeated_parameter_is_named_with_how_to_give_several_values(client):
    message = client.get("/v1/users/u1/homepage?rows=for_you&rows=ebooks").get_json()["error"]["message"]
    assert "given 2 times" in message and "comma-separated" in message


def test_sample_users_honours_its_limit(client, published):
    _, _, _, users, *_ = published
    body = assert_valid_exchange(client.get("/v1/sample-users?limit=3"), 200)
    assert len(body["user_ids"]) == 3 and set(body["user_ids"]) <= {u["user_id"] for u in users}
    assert len(assert_valid_exchange(client.get("/v1/sample-users"), 200)["user_ids"]) == 20
    assert len(assert_valid_exchange(client.get("/v1/sample-users?limit=100"), 200)["user_ids"]) == 100


def test_the_413_states_the_limit(client):
    response = client.post("/v1/users/u1/rows", data=b'{"rows": ["' + b"x" * MAX_BODY_BYTES + b'"]}',
                           content_type="application/json")
    error = assert_valid_exchange(response, 413)["error"]
    assert error["limit_bytes"] == MAX_BODY_BYTES == 65536 and error["field"] == "body"
    assert "65536 bytes (64 KiB)" in error["message"]
    response = client.post("/v1/users/u1/events", data=b"{" + b" " * MAX_BODY_BYTES + b"}",
                           content_type="application/json")
    assert assert_valid_exchange(response, 413)["error"]["limit_bytes"] == MAX_BODY_BYTES


# ---- the document, served, and real responses against it -------------------------------------------

def test_the_openapi_document_and_its_page_are_served_open(published):
    settings, catalog, *_ = published
    client = create_app(settings.replace(api_tokens="t" * 20), catalog).test_client()   # even behind a token
    document = client.get("/openapi.yaml")
    assert document.status_code == 200 and document.mimetype == "application/yaml"
    served = yaml.safe_load(document.data)
    assert served["openapi"] == "3.0.3" and served["paths"].keys() == SPEC["paths"].keys()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'url: "/openapi.yaml"' in html and "/docs/swagger-ui-bundle.js" in html
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.data
    assert client.get("/docs/swagger-ui.css").status_code == 200
    for other in ("index.html", "swagger-initializer.js", "..%2Fopenapi.yaml"):   # only the page's own assets
        assert client.get(f"/docs/{other}").status_code in (401, 404), other
    assert client.get("/v1/rows").status_code == 401     # the API itself still needs the token


def test_the_openapi_document_is_valid(catalogs):
    """The catalog-neutral document, and the one each catalog's service serves (generated from its
    live schema: app/openapi.py)."""
    from openapi_spec_validator import validate

    validate(SPEC)
    for client in catalogs.values():
        validate(yaml.safe_load(client.get("/openapi.yaml").data))


def test_real_responses_validate_against_the_document(client, published):
    settings, catalog, items, users, *_ = published
    user = users[0]["user_id"]
    for response in (
            client.get(f"/v1/users/{user}/homepage"),
            client.get(f"/v1/users/{user}/homepage?language=en&country=US&size=5&rows=podcasts,across_categories"),
            client.get(f"/v1/users/{user}/homepage?rows=podcasts,comedy&mode=script_score"),
            client.get("/v1/users/never-seen/homepage?rows=for_you"),
            client.post(f"/v1/users/{user}/rows", json={"rows": ["ebooks", {"id": "x", "ad_hoc": True, "size": 2}],
                                                         "filters": {"language": ["en", "es"]}}),
            client.get("/v1/rows"), client.get("/v1/facets"), client.get("/v1/sample-users?limit=2"),
            client.get("/healthz"), client.get("/readyz")):
        assert_valid_exchange(response, 200, valid_request=True)
    for response, status in (
            (client.get(f"/v1/users/{user}/homepage?mode=fast"), 400),
            (client.get("/v1/users/" + "x" * 129 + "/homepage"), 400),
            (client.post(f"/v1/users/{user}/rows", data="{nope", content_type="application/json"), 400),
            (client.post(f"/v1/users/{user}/rows", json={"rows": [{"id": "for_you", "size": 30}]}), 400),
            (client.post(f"/v1/users/{user}/events", json={"events": []}), 400),
            # This pair has no exported user encoder: the batch is logged, the answer is a 503.
            (client.post(f"/v1/users/{user}/events", json={"events": [{"item_id": items[0]["item_id"],
                                                                         "ts": "2026-01-01T00:00:00Z"}]}), 503)):
        assert_valid_exchange(response, status)
    cold = create_app(settings.replace(item_alias="no-such-alias", user_alias="no-such-alias"), catalog).test_client()
    assert_valid_exchange(cold.get("/readyz"), 503)
    assert_valid_exchange(cold.get(f"/v1/users/{user}/homepage"), 503)
    assert assert_valid_exchange(cold.get("/v1/facets"), 200)["item_generation"] is None


# ---- every example of the served document works on its catalog --------------------------------------

def _examples(spec: dict):
    """(operation, location, name, example) for every Example object in the document."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                for name, example in (parameter.get("examples") or {}).items():
                    yield (method, path), ("parameter", parameter["name"]), name, example
            for media in (operation.get("requestBody", {}).get("content") or {}).values():
                for name, example in (media.get("examples") or {}).items():
                    yield (method, path), ("body", None), name, example
            for status, response in operation.get("responses", {}).items():
                for media in (response.get("content") or {}).values():
                    for name, example in (media.get("examples") or {}).items():
                        yield (method, path), ("response", status), name, example


def _path_for(spec: dict, path: str, user_id: str | None = None) -> str:
    if "{user_id}" not in path:
        return path
    if user_id is None:   # the operation's own user_id example
        operation = next(op for op in spec["paths"][path].values())
        user_id = next(iter(next(p for p in operation["parameters"] if p["name"] == "user_id")["examples"].values()))["value"]
    return path.replace("{user_id}", quote(user_id, safe=""))


def test_the_served_document_describes_the_catalog_it_serves(catalogs):
    """The MovieLens service documents no user filters and MovieLens's facets; the synthetic one its
    two user filters with their live values, and its facets; neither names the other's."""
    movielens = yaml.safe_load(catalogs["movielens"].get("/openapi.yaml").data)
    synthetic = yaml.safe_load(catalogs["synthetic"].get("/openapi.yaml").data)

    def parameters(doc):
        return {p["name"]: p for p in doc["paths"]["/v1/users/{user_id}/homepage"]["get"]["parameters"]}

    def facets(doc):
        return set(doc["components"]["schemas"]["Clause"]["oneOf"][0]["properties"]["term"]["properties"])

    assert set(parameters(movielens)) == {"user_id", "rows", "size", "mode", "arm"}
    assert {"language", "country"} <= set(parameters(synthetic))
    assert parameters(synthetic)["language"]["schema"]["enum"][0] == "en"
    assert facets(movielens) == {"categories", "published_at"}
    assert facets(synthetic) == {"item_format", "language", "country", "categories", "published_at"}
    assert "categories" in movielens["components"]["schemas"]["Item"]["properties"]
    assert "item_format" not in yaml.safe_dump(movielens)


def test_every_example_works_on_its_catalog(catalogs):
    ran = Counter()
    for catalog, client in catalogs.items():
        spec = yaml.safe_load(client.get("/openapi.yaml").data)
        for (method, path), (kind, name), example_name, example in _examples(spec):
            label = (catalog, method, path, kind, name, example_name)
            if kind == "parameter" and method == "get":
                if name == "user_id":
                    response = client.get(_path_for(spec, path, example["value"]))
                else:
                    response = client.get(_path_for(spec, path), query_string={name: example["value"]})
                assert response.status_code == 200, (label, response.get_json())
                assert_valid_exchange(response, 200, valid_request=True)
            elif kind == "body":
                response = client.open(_path_for(spec, path), method=method.upper(), json=example["value"])
                assert response.status_code == 200, (label, response.get_json())
                body = assert_valid_exchange(response, 200)
                if path.endswith("/events"):
                    assert body["status"] == "applied", (label, body)
            elif kind == "response":
                status = int(name)
                request = example["x-request"]
                response = client.open(request["path"], method=request["method"], json=request.get("body"))
                assert response.status_code == status, (label, response.get_json())
                assert response.get_json() == example["value"], label   # the example is what the service says
                assert_valid_exchange(response, status)
            else:   # a path parameter of a POST: exercised with that operation's body examples
                assert kind == "parameter" and name == "user_id", label
                continue
            ran[kind] += 1
    assert ran["parameter"] >= 14 and ran["body"] >= 6 and ran["response"] >= 8, ran


def test_the_row_catalog_of_each_catalog_matches_its_row_config(catalogs):
    for name, path in (("movielens", "movielens-100k"), ("synthetic", "synthetic")):
        catalog = RowCatalog.load(os.path.join(REPO, "catalogs", path, "rows.yaml"))
        body = assert_valid_exchange(catalogs[name].get("/v1/rows"), 200)
        assert [r["id"] for r in body["rows"]] == list(catalog.rows)
        assert body["user_filters"] == list(catalog.user_filters)
    movielens = catalogs["movielens"].get("/v1/facets").get_json()["facets"]
    genres = [v["value"] for v in movielens["categories"]["values"]]
    assert "Comedy" in genres and "comedy" not in genres and movielens["categories"]["complete"]
    assert movielens["published_at"]["min"] < "1930-01-01" < movielens["published_at"]["max"]
