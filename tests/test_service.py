"""The homepage service against the real node, through Flask's test client."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from datetime import date

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from openapi_check import assert_matches_schema

from app import create_app
from app.state import service_of
from facetrec.catalog.rows import Row, RowCatalog
from facetrec.es import script_languages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client(published):
    settings, catalog, *_ = published
    app = create_app(settings.replace(es_request_timeout_s=5.0), catalog)
    return app.test_client()


def facets_ok(item: dict, row_id: str, language: str, country: str) -> bool:
    ok = item["language"] == language and country in item["country"]
    if row_id == "audiobooks":
        ok &= item["item_format"] == "audiobook"
    if row_id == "ebooks":
        ok &= item["item_format"] == "ebook"
    if row_id == "podcasts":
        ok &= item["item_format"] == "podcast"
    if row_id == "comedy":
        ok &= "comedy" in item["categories"] and item["item_format"] != "document"
    if row_id == "new_releases":
        ok &= date.fromisoformat(item["published_at"]) >= date(2015, 1, 1)
    return ok


def test_rows_honour_filters_exclusions_dedupe_and_exact_order(client, published):
    settings, catalog, items, users, item_vectors, user_vectors = published
    by_id = {r["item_id"]: (i, r) for i, r in enumerate(items)}
    user_index = 7
    user = users[user_index]
    response = client.get(f"/v1/users/{user['user_id']}/homepage?language=en&country=US")
    assert response.status_code == 200, response.json
    page = response.json
    assert_matches_schema(page, "Homepage")
    assert page["user_id"] == user["user_id"] and page["generation"] == "20260101-000001"
    assert [r["id"] for r in page["rows"]] == list(catalog.homepage)

    seen = set(user["seen_item_ids"])
    returned: list[str] = []
    for row in page["rows"]:
        assert row["source"] == "personalized" and "error" not in row
        assert len(row["items"]) == catalog.rows[row["id"]].size
        for item in row["items"]:
            assert facets_ok(by_id[item["id"]][1], row["id"], "en", "US"), (row["id"], item["id"])
            assert item["id"] not in seen
            np.testing.assert_allclose(item["score"], float(item_vectors[by_id[item["id"]][0]] @ user_vectors[user_index]),
                                       atol=1e-3)
        scores = [i["score"] for i in row["items"]]
        assert scores == sorted(scores, reverse=True)
        returned += [i["id"] for i in row["items"]]
    assert len(returned) == len(set(returned)), "an item appeared in two rows"

    # The first row is the exact top-10 by dot product among eligible items (knn over a flat index).
    eligible = [i for i, r in enumerate(items) if facets_ok(r, "for_you", "en", "US") and r["item_id"] not in seen]
    dots = item_vectors[eligible] @ user_vectors[user_index]
    expected = [items[eligible[j]]["item_id"] for j in np.argsort(-dots, kind="stable")[:10]]
    assert [i["id"] for i in page["rows"][0]["items"]] == expected


@pytest.mark.parametrize("n_seen", [60, 150])
def test_rows_stay_full_when_the_users_top_items_are_all_seen(es, client, published, n_seen):
    """Seen items are dropped after the vector search (60: within the over-fetch) or excluded
    inside the filter (150: more than it covers); either way the row is the exact top-10 of the
    unseen items, never short."""
    from facetrec.es import alias_index
    from facetrec.serving.row_queries import SEEN_OVERFETCH_MAX

    assert (n_seen <= SEEN_OVERFETCH_MAX) == (n_seen == 60)  # one case on each side of the bound
    settings, _, items, users, item_vectors, user_vectors = published
    vector = user_vectors[5]
    eligible = [i for i, r in enumerate(items) if facets_ok(r, "for_you", "en", "US")]
    ranked = [items[eligible[j]]["item_id"] for j in np.argsort(-(item_vectors[eligible] @ vector), kind="stable")]
    seen, expected = ranked[:n_seen], ranked[n_seen:n_seen + 10]
    user_index = alias_index(es, settings.user_alias)
    user_id = f"heavy-reader-{n_seen}"
    es.index(index=user_index, id=user_id, refresh=True,
             document={"user_embed": vector.tolist(), "seen_item_ids": seen, "generation": "20260101-000001"})
    try:
        page = client.get(f"/v1/users/{user_id}/homepage?language=en&country=US&rows=for_you").json
    finally:
        es.delete(index=user_index, id=user_id, refresh=True)
    assert [i["id"] for i in page["rows"][0]["items"]] == expected


def test_later_rows_are_backfilled_after_dedupe(client, published):
    _, _, items, users, *_ = published
    body = {"rows": [{"id": "for_you", "size": 20}, {"id": "ebooks", "size": 20}]}  # each row's max_size
    page = client.post(f"/v1/users/{users[3]['user_id']}/rows", json=body).json
    first, second = page["rows"]
    assert len(first["items"]) == 20 and len(second["items"]) == 20
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in second["items"]}


def test_cold_user_gets_popular_rows_under_the_same_filters(client, published):
    _, _, items, *_ = published
    by_id = {r["item_id"]: r for r in items}
    page = client.get("/v1/users/never-seen-user/homepage?language=en&rows=for_you,audiobooks").json
    for row in page["rows"]:
        assert row["source"] == "popular" and len(row["items"]) == 10
        assert all(by_id[i["id"]]["language"] == "en" for i in row["items"])
        popularity = [i["score"] for i in row["items"]]
        assert popularity == sorted(popularity, reverse=True)
    eligible = sorted((r for r in items if r["language"] == "en"), key=lambda r: (-r["popularity"], r["item_id"]))
    assert [i["id"] for i in page["rows"][0]["items"]] == [r["item_id"] for r in eligible[:10]]


def test_one_failing_row_does_not_sink_the_others(published):
    settings, catalog, _, users, *_ = published
    # A row whose filter Elasticsearch refuses (`popularity`, a float in the index, asked as a keyword):
    # what a row config that slipped past validation would send. Built without the config's checks.
    broken = Row(id="broken", title="Broken", filter=({"term": {"popularity": "very"}},))
    rows = {"for_you": catalog.rows["for_you"], "broken": broken, "ebooks": catalog.rows["ebooks"]}
    app = create_app(settings.replace(es_request_timeout_s=5.0),
                     dataclasses.replace(catalog, rows=rows, homepage=tuple(rows)))
    logged = _capture("facetrec.serving.homepage")
    response = app.test_client().get(f"/v1/users/{users[0]['user_id']}/homepage", headers={"X-Request-Id": "req-77"})
    page = response.json
    assert_matches_schema(page, "Homepage")
    rows = {r["id"]: r for r in page["rows"]}
    assert rows["broken"]["items"] == [] and rows["broken"]["error_code"] == "search_rejected"
    # The caller gets a short safe message with the request id; Elasticsearch's reason (mapping
    # details, here the bad number) only reaches the structured log, under that id.
    assert rows["broken"]["error"] == "this row's search was rejected; the other rows are served (request req-77)"
    assert "very" not in response.get_data(as_text=True)
    (record,) = [r for r in logged if getattr(r, "event", None) == "row_error"]
    assert record.request_id == "req-77" and record.row == "broken" and "very" in record.detail
    assert len(rows["for_you"]["items"]) == 10 and len(rows["ebooks"]["items"]) == 10


def _capture(logger_name: str) -> list:
    """Records of a facetrec logger (they do not propagate to the root, so caplog misses them)."""
    import logging

    records: list = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(logger_name).addHandler(handler)
    return records


class Proxy:
    """A loopback TCP proxy in front of the real node, so a test can cut Elasticsearch off and back."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = None
        self.server = None
        self.conns: list[socket.socket] = []

    def start(self, port: int | None = None):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port or 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server):
        while True:
            try:
                down, _ = server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self):
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread; close() alone does not
        except OSError:
            pass
        self.server.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self.conns = []


def test_unreachable_elasticsearch_gives_503_then_recovers(published):
    settings, catalog, _, users, *_ = published
    proxy = Proxy(int(settings.es_url.rsplit(":", 1)[1]))
    proxy.start()
    app = create_app(settings.replace(es_url=f"http://127.0.0.1:{proxy.port}", es_request_timeout_s=1.0), catalog)
    client = app.test_client()
    url = f"/v1/users/{users[0]['user_id']}/homepage"
    assert client.get(url).status_code == 200

    proxy.stop()
    began = time.monotonic()
    response = client.get(url)
    assert time.monotonic() - began < 1.5
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json["error"]["code"] == "unavailable"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200

    proxy.start(proxy.port)
    deadline = time.monotonic() + 30
    while client.get(url).status_code != 200:
        assert time.monotonic() < deadline, "the service did not recover after Elasticsearch came back"
        time.sleep(0.5)
    assert client.get("/readyz").status_code == 200
    proxy.stop()


def test_closed_port_gives_503_within_the_timeout(published):
    settings, catalog, *_ = published
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    app = create_app(settings.replace(es_url=f"http://127.0.0.1:{closed}", es_request_timeout_s=1.0), catalog)
    began = time.monotonic()
    response = app.test_client().get("/v1/users/u1/homepage")
    assert response.status_code == 503 and time.monotonic() - began < 1.5
    assert_matches_schema(response.json, "Error")


def test_metrics_arrive_over_real_udp(published):
    settings, catalog, _, users, *_ = published
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        port = listener.getsockname()[1]
        app = create_app(settings.replace(statsd_host="127.0.0.1", statsd_port=port, es_request_timeout_s=5.0), catalog)
        client = app.test_client()
        client.get(f"/v1/users/{users[1]['user_id']}/homepage?rows=for_you,podcasts")
        client.get("/v1/users/cold-user/homepage?rows=for_you")
        service_of(app).metrics.flush()
        lines = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                lines += listener.recv(65536).decode().splitlines()
            except socket.timeout:
                break
            if all(any(part in line for line in lines)
                   for part in ("homepage.row.fallback", "request.latency", "source:popular")):
                break
    text = "\n".join(lines)
    assert "facetrec.request.latency:" in text and "|ms" in text
    assert "endpoint:api.homepage" in text and "status:200" in text
    assert "facetrec.es.took:" in text and "row:podcasts" in text and "mode:knn" in text
    assert "facetrec.homepage.row.fallback:1|c" in text and "mode:popular" in text
    assert "component:service" in text
    # Every page's metrics carry its experiment arm (control: no experiment runs).
    assert all("arm:control" in line for line in lines if "request.latency" in line and "api.homepage" in line)
    assert "facetrec.homepage.pages:1|c|#source:personalized,arm:control" in text
    assert "facetrec.homepage.pages:1|c|#source:popular,arm:control" in text


def test_knn_filter_is_the_same_for_every_user_and_seen_items_are_removed_outside_it():
    """Elasticsearch caches a knn filter's bitset by the whole filter: it must not hold per-user ids."""
    from facetrec.catalog.rows import Row
    from facetrec.serving.row_queries import MAX_NUM_CANDIDATES, SEEN_OVERFETCH_MAX, build_row_search

    row = Row(id="r", title="r", filter=({"term": {"item_format": "audiobook"}},),
              must_not=({"term": {"categories": "horror"}},))
    user_filters = [{"term": {"language": "en"}}]

    def body(seen, k=10, factor=10):
        return build_row_search(row, user_vector=[0.5, -1.0], user_filters=user_filters, exclude_ids=seen, k=k,
                                mode="knn", num_candidates_factor=factor)

    shared_filter = {"bool": {"filter": [{"term": {"language": "en"}}, {"term": {"item_format": "audiobook"}}],
                              "must_not": [{"term": {"categories": "horror"}}]}}
    a, b = body(["s1", "s2", "s1"]), body([f"s{i}" for i in range(SEEN_OVERFETCH_MAX)])
    knn_a, knn_b = a["query"]["bool"]["must"][0]["knn"], b["query"]["bool"]["must"][0]["knn"]
    assert knn_a["filter"] == knn_b["filter"] == shared_filter
    assert a["query"]["bool"]["must_not"] == [{"ids": {"values": ["s1", "s2"]}}]  # de-duplicated, in order
    assert a["size"] == 10 and knn_a["k"] == 12 and knn_a["num_candidates"] == 100
    assert knn_b["k"] == 10 + SEEN_OVERFETCH_MAX and knn_b["num_candidates"] == 10 + SEEN_OVERFETCH_MAX
    assert body([])["query"] == {"knn": {**knn_a, "k": 10, "num_candidates": 100}}
    assert body([], k=100, factor=1000)["query"]["knn"]["num_candidates"] == MAX_NUM_CANDIDATES

    # More seen items than the over-fetch covers: they go inside the filter, so the row cannot run short.
    heavy = [f"s{i}" for i in range(SEEN_OVERFETCH_MAX + 1)]
    knn_c = body(heavy)["query"]["knn"]
    assert knn_c["k"] == 10 and knn_c["filter"]["bool"]["must_not"][-1] == {"ids": {"values": heavy}}


@pytest.mark.parametrize("lang", ["painless", "facetrec_vector"])
def test_script_score_request_body_keeps_user_values_in_params(lang):
    from facetrec.catalog.rows import Row
    from facetrec.serving.row_queries import build_row_search

    evil = "x'); System.exit(0); //"
    row = Row(id="r", title="r", filter=({"term": {"item_format": "audiobook"}},))
    body = build_row_search(row, user_vector=[0.5, -1.0], user_filters=[{"term": {"language": evil}}],
                            exclude_ids=["seen-1"], k=5, mode="script_score", num_candidates_factor=10,
                            script_lang=lang)
    script = body["query"]["script_score"]["script"]
    assert script["params"]["query_vector"] == [0.5, -1.0]
    assert evil not in script["source"] and "0.5" not in script["source"]
    if lang == "facetrec_vector":
        assert script["lang"] == "facetrec_vector" and script["source"] == "dot_product"
    else:
        assert "lang" not in script  # painless is the default language
    bool_query = body["query"]["script_score"]["query"]["bool"]
    assert {"term": {"language": evil}} in bool_query["filter"]
    assert {"ids": {"values": ["seen-1"]}} in bool_query["must_not"]


def test_script_score_mode_ranks_and_scores_like_exact_knn(es, client, published):
    """painless on a full distribution, facetrec_vector (elasticsearch_local's plugin) on the local node."""
    if not script_languages(es):
        pytest.skip("this cluster has neither painless nor the facetrec_vector plugin")
    settings, catalog, items, users, item_vectors, user_vectors = published
    raw = yaml.safe_load(open(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml")))
    raw["caller_modes"] = ["knn", "script_score"]   # this test asks both modes of every row
    for row in raw["rows"]:
        row.pop("caller_modes", None)
    open_modes = RowCatalog.from_dict(raw, catalog.schema)
    client = create_app(settings.replace(es_request_timeout_s=5.0), open_modes).test_client()
    row_of = {r["item_id"]: i for i, r in enumerate(items)}
    for u in (2, 3, 4):
        knn = client.get(f"/v1/users/{users[u]['user_id']}/homepage?language=en&mode=knn").json
        script = client.get(f"/v1/users/{users[u]['user_id']}/homepage?language=en&mode=script_score").json
        for row in script["rows"]:
            assert "error" not in row and len(row["items"]) == catalog.rows[row["id"]].size, row
            np.testing.assert_allclose([i["score"] for i in row["items"]],
                                       [float(item_vectors[row_of[i["id"]]] @ user_vectors[u]) for i in row["items"]],
                                       atol=1e-3)
        assert [i["id"] for i in knn["rows"][0]["items"]] == [i["id"] for i in script["rows"][0]["items"]]


def test_script_score_row_in_a_language_the_cluster_lacks_fails_alone(es, published):
    settings, catalog, _, users, *_ = published
    if "painless" in script_languages(es):
        pytest.skip("the cluster has painless")
    raw = {"rows": [{"id": "for_you", "title": "For you", "retrieval": "script_score"},
                    {"id": "ebooks", "title": "Ebooks", "filter": [{"term": {"item_format": "ebook"}}]}]}
    app = create_app(settings.replace(es_request_timeout_s=5.0, script_lang="painless"),
                     RowCatalog.from_dict(raw, catalog.schema))
    logged = _capture("facetrec.serving.homepage")
    rows = {r["id"]: r for r in app.test_client().get(f"/v1/users/{users[2]['user_id']}/homepage").json["rows"]}
    assert rows["for_you"]["error_code"] == "search_rejected" and rows["for_you"]["items"] == []
    assert any("painless" in getattr(r, "detail", "") for r in logged)
    assert "error" not in rows["ebooks"] and len(rows["ebooks"]["items"]) == 10


@pytest.mark.parametrize("url,field", [
    ("/v1/users/u1/homepage?rows=nope", "rows"),
    ("/v1/users/u1/homepage?size=0", "size"),
    ("/v1/users/u1/homepage?size=101", "size"),
    ("/v1/users/u1/homepage?size=21", "size"),                      # for_you allows 2 x 10
    ("/v1/users/u1/homepage?mode=script_score", "mode"),            # only podcasts/comedy allow it
    ("/v1/users/u1/homepage?rows=podcasts,for_you&mode=script_score", "mode"),
    ("/v1/users/u1/homepage?size=ten", "size"),
    ("/v1/users/u1/homepage?mode=fast", "mode"),
    ("/v1/users/u1/homepage?colour=red", "colour"),
    ("/v1/users/" + "x" * 129 + "/homepage", "user_id"),
    ("/v1/users/bad%00id/homepage", "user_id"),
    ("/v1/users/bad%E2%80%8Fid/homepage", "user_id"),
    ("/v1/users/u1/homepage?language=" + "e" * 300, "filters.language"),
])
def test_bad_query_input_is_400_naming_the_field(client, url, field):
    response = client.get(url)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field
    assert_matches_schema(response.json, "Error")


@pytest.mark.parametrize("body,field", [
    ({"rows": ["nope"]}, "rows[0]"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"term": {"colour": "red"}}]}]}, "rows[0].filter.colour"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"range": {"popularity": {"gte": "high"}}}]}]}, "rows[0].filter.popularity"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"range": {"language": {"gte": "a"}}}]}]}, "rows[0].filter.language"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"script": {"source": "1"}}]}]}, "rows[0].filter"),
    ({"rows": [{"id": "for_you", "size": 1000}]}, "rows[0].size"),
    ({"rows": [{"id": "comedy", "size": "3"}]}, "rows[0].size"),      # a JSON number, as the schema says
    ({"rows": [{"id": "for_you", "size": True}]}, "rows[0].size"),
    ({"rows": [{"id": "for_you", "size": 30}]}, "rows"),
    ({"rows": [{"id": f"r{i}", "ad_hoc": True, "size": 100, "filter": [{"term": {"language": "en"}}]} for i in range(3)]}, "rows"),
    ({"rows": ["for_you"], "mode": "script_score"}, "mode"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"range": {"published_at": {"gte": "20150101"}}}]}]},
     "rows[0].filter.published_at"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"range": {"published_at": {"gte": "2015-W01-1"}}}]}]},
     "rows[0].filter.published_at"),
    ({"rows": [{"id": "x", "ad_hoc": True, "filter": [{"range": {"published_at": {"gte": "2015-13-01"}}}]}]},
     "rows[0].filter.published_at"),
    ({"filters": {"language": 5}}, "filters.language"),
    ({"filters": {"item_format": "ebook"}}, "filters.item_format"),
    ({"rows": []}, "rows"),
    ({"extra": 1}, "extra"),
    ([1, 2], "body"),
])
def test_bad_body_is_400_naming_the_field(client, body, field):
    response = client.post("/v1/users/u1/rows", json=body)
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == field


def test_malformed_json_unknown_route_and_wrong_method_are_json(client):
    response = client.post("/v1/users/u1/rows", data="{not json", content_type="application/json")
    assert response.status_code == 400 and response.json["error"]["field"] == "body"
    response = client.get("/v2/nothing")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    response = client.delete("/v1/users/u1/homepage")
    assert response.status_code == 405 and "error" in response.json
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}   # RFC 9110: a 405 says what is allowed
    response = client.open("/v1/sample-users", method="TRACE")
    assert response.status_code == 405 and "GET" in response.headers["Allow"]


def test_ad_hoc_row_with_filters_is_served(client, published):
    _, _, items, users, *_ = published
    by_id = {r["item_id"]: r for r in items}
    body = {"rows": [{"id": "short_history", "ad_hoc": True, "title": "Short history", "size": 5,
                      "filter": [{"term": {"categories": "history"}}], "must_not": [{"term": {"item_format": "podcast"}}]}],
            "filters": {"country": ["US", "GB"]}}
    page = client.post(f"/v1/users/{users[4]['user_id']}/rows", json=body).json
    row = page["rows"][0]
    assert row["title"] == "Short history" and len(row["items"]) == 5
    for item in row["items"]:
        source = by_id[item["id"]]
        assert "history" in source["categories"] and source["item_format"] != "podcast"
        assert {"US", "GB"} & set(source["country"])


def test_readyz_and_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"


PARAM_NAMES = st.sampled_from(["rows", "size", "mode", "language", "country", "colour", "", "rows[]"])


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user_id=st.text(min_size=1, max_size=140).filter(lambda s: "/" not in s and "?" not in s and "#" not in s),
       params=st.dictionaries(PARAM_NAMES, st.text(max_size=40), max_size=4))
def test_fuzzed_homepage_requests_never_500(client, user_id, params):
    from urllib.parse import quote, urlencode

    response = client.get(f"/v1/users/{quote(user_id, safe='')}/homepage?{urlencode(params)}")
    assert response.status_code in (200, 400, 404), response.json
    assert response.is_json


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                         lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(st.sampled_from(["rows", "filters", "mode", "id", "size", "filter",
                                                            "must_not", "term", "terms", "range", "language",
                                                            "item_format", "gte", "title"]), children, max_size=4),
                         max_leaves=12))
@example(body=-9_223_372_036_854_775_809)                  # beyond orjson's 64 bits, echoed in the 400
@example(body={"rows": [{"id": "x", "size": 2 ** 70, "filter": [{"term": {"language": 2 ** 64}}]}]})
def test_fuzzed_rows_bodies_never_500(client, body):
    response = client.post("/v1/users/u1/rows", json=body)
    assert response.status_code in (200, 400), (body, response.json)


# ---- hardening (issue 12): limits, error hygiene, strict inputs, access control ------------------

def test_bad_settings_fail_at_start_naming_the_variable():
    from facetrec.settings import Settings, SettingsError

    for raw in ("0", "-3", "5000"):
        with pytest.raises(SettingsError, match="FACETREC_NUM_CANDIDATES_FACTOR"):
            Settings.from_env({"FACETREC_NUM_CANDIDATES_FACTOR": raw})
    with pytest.raises(SettingsError, match="FACETREC_API_TOKENS"):
        Settings.from_env({"FACETREC_API_TOKENS": "short"})
    with pytest.raises(SettingsError, match="FACETREC_HNSW_FILTER_HEURISTIC"):
        Settings.from_env({"FACETREC_HNSW_FILTER_HEURISTIC": "exact"})
    secret = Settings.from_env({"FACETREC_API_TOKENS": "s3cret-token-0123456789"})
    assert "s3cret" not in repr(secret) and secret.api_token_list == ["s3cret-token-0123456789"]


def test_a_body_over_the_limit_is_413_without_being_parsed(client):
    from app import MAX_BODY_BYTES

    huge = b'{"rows": [' + b'"for_you",' * (14 * 1024 * 1024 // 10) + b'"for_you"]}'
    began = time.monotonic()
    response = client.post("/v1/users/u1/rows", data=huge, content_type="application/json")
    assert response.status_code == 413 and response.is_json and time.monotonic() - began < 1.0
    assert_matches_schema(response.json, "Error")
    just_under = {"rows": ["for_you"], "filters": {"language": "en"}}
    padded = json_dumps_padded(just_under, MAX_BODY_BYTES - 1)
    assert client.post("/v1/users/u1/rows", data=padded, content_type="application/json").status_code == 200


def json_dumps_padded(body: dict, size: int) -> bytes:
    import json

    text = json.dumps(body).encode()
    return text[:-1] + b" " * (size - len(text)) + b"}"


def test_a_missing_user_alias_or_a_refusing_cluster_is_503_not_popular_rows(published):
    """Before: a missing user alias looked like an unknown user: everyone got popularity rows, 200."""
    settings, catalog, _, users, *_ = published
    app = create_app(settings.replace(user_alias="no-such-user-alias", es_request_timeout_s=5.0), catalog)
    response = app.test_client().get(f"/v1/users/{users[0]['user_id']}/homepage")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json["error"]["code"] == "unavailable"
    # A user the live generation does not know still gets popular rows.
    cold = create_app(settings.replace(es_request_timeout_s=5.0), catalog).test_client().get(
        "/v1/users/never-seen/homepage?rows=for_you")
    assert cold.status_code == 200 and cold.json["rows"][0]["source"] == "popular"


def test_date_filters_pass_validation_only_in_the_format_elasticsearch_is_told(client, published):
    from facetrec.catalog.rows import DATE_FORMAT, validate_clause

    clause = validate_clause({"range": {"published_at": {"gte": "2015-01-01"}}}, {"published_at": "date"})
    assert clause == {"range": {"published_at": {"gte": "2015-01-01", "format": DATE_FORMAT}}}
    _, _, items, users, *_ = published
    published_at = {r["item_id"]: r["published_at"] for r in items}
    for bound in ("2015-01-01", "2015-01-01T00:00:00Z", "2015-01-01T00:00:00.000+00:00"):
        body = {"rows": [{"id": "recent", "ad_hoc": True, "size": 10, "filter": [{"range": {"published_at": {"gte": bound}}}]}]}
        page = client.post(f"/v1/users/{users[5]['user_id']}/rows", json=body).json
        assert len(page["rows"][0]["items"]) == 10, page
        assert all(str(published_at[i["id"]])[:10] >= "2015-01-01" for i in page["rows"][0]["items"])


def test_dot_product_similarity_serves_rows_from_raw_user_vectors(es, es_settings, unique):
    """Before: the raw (non-unit) user vector went to a dot_product field and every knn row failed,
    carrying a preview of the embedding back to the caller. Now the query vector is normalized."""
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    items, users, item_vectors, user_vectors = embedding_records(n_items=800, n_users=10, dims=64, seed=17)
    unit = item_vectors / np.linalg.norm(item_vectors, axis=1, keepdims=True)
    items = [{**r, "item_embed": unit[i]} for i, r in enumerate(items)]
    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="flat", similarity="dot_product", lock_lease_s=10.0)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version="unit", generation="20260101-000001",
                progress=False, sample_users=3)
    page = create_app(settings.replace(es_request_timeout_s=5.0), catalog).test_client().get(
        f"/v1/users/{users[1]['user_id']}/homepage?rows=for_you").json
    row = page["rows"][0]
    assert "error" not in row and len(row["items"]) == 10
    seen = set(users[1]["seen_item_ids"])
    q = user_vectors[1] / np.linalg.norm(user_vectors[1])
    exact = [items[i]["item_id"] for i in np.argsort(-(unit @ q)) if items[i]["item_id"] not in seen][:10]
    assert [i["id"] for i in row["items"]] == exact


def test_the_api_token_guards_everything_but_the_probes(published):
    settings, catalog, _, users, *_ = published
    token = "tok-" + "7" * 28
    app = create_app(settings.replace(api_tokens=f"other-token-000000000,{token}", es_request_timeout_s=5.0), catalog)
    client = app.test_client()
    url = f"/v1/users/{users[0]['user_id']}/homepage"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                    {"Authorization": f"Basic {token}"}):
        response = client.get(url, headers=headers)
        assert response.status_code == 401 and response.json["error"]["field"] == "Authorization", headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    for path in ("/v1/sample-users", "/", "/v1/rows"):
        assert client.get(path).status_code == 401, path
    assert client.get("/v1/sample-users", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_seen_items_are_excluded_up_to_the_documented_bound(es, published):
    """A user whose MAX_SEEN_ITEMS best items are all seen gets the next best, none of the seen."""
    from facetrec.catalog.fields import MAX_SEEN_ITEMS
    from facetrec.items.documents import user_document

    settings, catalog, items, users, item_vectors, user_vectors = published
    order = [items[i]["item_id"] for i in np.argsort(-(item_vectors @ user_vectors[9]))]
    index = es.indices.get_alias(name=settings.user_alias).popitem()[0]
    live_user = es.get(index=index, id=users[9]["user_id"])["_source"]
    over = [f"old-{i}" for i in range(40)] + order[:MAX_SEEN_ITEMS]   # older history beyond the bound first
    _, doc = user_document({"user_id": "bound-user", "user_embed": user_vectors[9], "seen_item_ids": over},
                           live_user["generation"], 64)
    assert doc["seen_item_ids"] == order[:MAX_SEEN_ITEMS]               # the bound is kept at load time
    doc["item_generation"] = live_user.get("item_generation")
    es.index(index=index, id="bound-user", document=doc, refresh="true")
    try:
        client = create_app(settings.replace(es_request_timeout_s=5.0), catalog).test_client()
        page = client.get("/v1/users/bound-user/homepage?rows=for_you").json
        assert [i["id"] for i in page["rows"][0]["items"]] == order[MAX_SEEN_ITEMS:MAX_SEEN_ITEMS + 10]
    finally:
        es.delete(index=index, id="bound-user", refresh="true")


HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(st.sampled_from(["Authorization", "X-Request-Id", "Content-Type", "Accept",
                                                "Content-Length"]), HEADER_VALUES, max_size=3),
       method=st.sampled_from(["GET", "POST"]))
def test_fuzzed_headers_never_500(client, headers, method):
    headers = {k: v for k, v in headers.items() if k != "Content-Length" or v.isdigit()}
    if method == "GET":
        response = client.get("/v1/users/u1/homepage?rows=for_you", headers=headers)
    else:
        response = client.post("/v1/users/u1/rows", data=b'{"rows": ["for_you"]}', headers=headers)
    assert response.status_code < 500, (headers, response.status_code)
    assert response.is_json
