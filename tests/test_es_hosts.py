"""Several node addresses (pure logic and a fake server: no Elasticsearch needed): ES_URL parsing
and validation, and the service's client sending a dead node's request to the next one."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest

from facetrec.es import resolve_hosts, resolve_url, serving_client
from facetrec.settings import Settings, SettingsError


def test_es_url_takes_every_node_comma_separated():
    settings = Settings(es_url="http://a:9200, http://b:9200,https://c:9243")
    assert resolve_hosts(settings) == ["http://a:9200", "http://b:9200", "https://c:9243"]
    assert resolve_url(settings) == "http://a:9200,http://b:9200,https://c:9243"


@pytest.mark.parametrize("value", [" , ", "a:9200", "http://a:9200,http://a:9200", "http://a:9200,,http://b:9200"])
def test_a_bad_es_url_fails_naming_the_variable(value):
    with pytest.raises(SettingsError, match="ES_URL="):
        Settings(es_url=value)


def test_bad_shards_or_replicas_fail_naming_the_variables():
    with pytest.raises(SettingsError, match="FACETREC_SHARDS=0"):
        Settings(shards=0)
    with pytest.raises(SettingsError, match="FACETREC_REPLICAS=-1"):
        Settings(replicas=-1)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again: a connection is refused, as by a killed node


def test_the_service_client_sends_a_dead_nodes_request_to_the_next_and_never_retries_a_503():
    class Node(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            body = json.dumps({"cluster_name": "fake", "version": {"number": "9.5.3"}, "tagline": "You Know, for Search"}).encode()
            self.server.hits += 1   # before answering: the client may read the answer before a later line runs
            self.send_response(self.server.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    live = http.server.HTTPServer(("127.0.0.1", 0), Node)
    live.status, live.hits = 200, 0
    threading.Thread(target=live.serve_forever, daemon=True).start()
    try:
        dead = [f"http://127.0.0.1:{_dead_port()}" for _ in range(2)]
        es = serving_client(Settings(es_url=",".join([*dead, f"http://127.0.0.1:{live.server_port}"])))
        for _ in range(5):   # whichever node a request starts on, the live one answers it
            assert es.info()["cluster_name"] == "fake"
        assert live.hits == 5
        live.status = 503
        from elasticsearch import ApiError

        es = serving_client(Settings(es_url=f"http://127.0.0.1:{live.server_port},{dead[0]}"))
        hits = live.hits
        with pytest.raises(ApiError):
            es.info()
        assert live.hits == hits + 1   # the 503 is answered once, never sent again
    finally:
        live.shutdown()
