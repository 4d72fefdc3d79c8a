"""The one place that turns settings into an Elasticsearch client.

``ES_URL`` (with ``ES_API_KEY``, or ``ES_USERNAME``+``ES_PASSWORD``, and ``ES_CA_CERT``) points at a
real cluster: one URL, or every node's, comma-separated (the client spreads requests over them and
leaves out a node that fails). Without ``ES_URL`` the local node(s) recorded by ``facetrec-es start``
are used, every node of a local cluster.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import orjson
from elasticsearch import ApiError, ConnectionTimeout, Elasticsearch
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer

from facetrec.errors import ClusterUnavailable, ConfigurationError
from facetrec.local.node import local_node_urls
from facetrec.settings import Settings

# Statuses of an overloaded or unreachable cluster (worth retrying; the service answers 503).
UNAVAILABLE_STATUSES = (429, 502, 503, 504)


class NoClusterConfigured(ConfigurationError):
    """Neither ES_URL nor a recorded local node says where the cluster is."""


def resolve_hosts(settings: Settings) -> list[str]:
    """The cluster's node URLs: ``ES_URL`` split at commas, or every recorded local node."""
    if settings.es_url:
        hosts = [url.strip() for url in settings.es_url.split(",") if url.strip()]
        if hosts:
            return hosts
    hosts = local_node_urls(settings.local_es_home)
    if not hosts:
        raise NoClusterConfigured(
            f"ES_URL is not set and no local node is recorded in {settings.local_es_home}: "
            "start one with `facetrec-es start`, or set ES_URL to your cluster")
    return hosts


def resolve_url(settings: Settings) -> str:
    """The node URLs as one ``ES_URL`` value (comma-separated), for a process or executor to pass on."""
    return ",".join(resolve_hosts(settings))


def client_options(settings: Settings) -> dict:
    """Authentication and TLS options for a client of the configured cluster (picklable, so Spark
    executors can build their own clients with them)."""
    options: dict = {}
    if settings.es_api_key:
        options["api_key"] = settings.es_api_key
    elif settings.es_username:
        options["basic_auth"] = (settings.es_username, settings.es_password or "")
    if settings.es_ca_cert:
        options["ca_certs"] = settings.es_ca_cert
    return options


class _OrjsonNdjsonSerializer(NdjsonSerializer):
    """Bulk and _msearch bodies (NDJSON) through orjson: ~10x faster than the standard library on
    vector-heavy documents (measured in docs/benchmarks.md), with the same output."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


def serializers() -> dict:
    """orjson for every JSON and NDJSON body the client sends and reads (plain and compatibility mimetypes)."""
    ndjson, json_ = _OrjsonNdjsonSerializer(), OrjsonSerializer()
    return {"application/json": json_, "application/vnd.elasticsearch+json": json_,
            "application/x-ndjson": ndjson, "application/vnd.elasticsearch+x-ndjson": ndjson}


def make_client(settings: Settings, *, request_timeout: float | None = None, **options) -> Elasticsearch:
    """A client for the configured cluster. ``request_timeout`` defaults to the serving timeout."""
    timeout = request_timeout if request_timeout is not None else settings.es_request_timeout_s
    options.setdefault("serializers", serializers())
    return Elasticsearch(resolve_hosts(settings), request_timeout=timeout, **client_options(settings), **options)


def serving_client(settings: Settings) -> Elasticsearch:
    """The service's client: a request that cannot reach a node (refused, reset: a dead node) is
    sent to the next node at once, each node at most once; a timeout or an overloaded cluster's
    status is not retried (the caller answers 503). The timeout is per try: a node that drops a
    connection mid-request can make one request take up to (nodes x timeout). A node that fails is
    left out of the pool for 1 s, doubling to 30 s while it keeps failing (elastic_transport's
    dead-node backoff), so its share of the traffic goes to the others meanwhile."""
    hosts = resolve_hosts(settings)
    return make_client(settings, max_retries=len(hosts) - 1, retry_on_timeout=False, retry_on_status=())


_with_timeout: "weakref.WeakKeyDictionary[Elasticsearch, dict[float, Elasticsearch]]" = weakref.WeakKeyDictionary()


def with_timeout(es: Elasticsearch, timeout_s: float) -> Elasticsearch:
    """``es.options(request_timeout=timeout_s)``, made once per client and timeout: building one
    builds the client's ~40 API namespaces and reads the environment (measured: ~1 ms of a
    homepage's service CPU for its two requests)."""
    per_client = _with_timeout.get(es)
    if per_client is None:
        per_client = _with_timeout.setdefault(es, {})
    client = per_client.get(timeout_s)
    if client is None:
        client = per_client.setdefault(timeout_s, es.options(request_timeout=timeout_s))
    return client


def alias_index(es: Elasticsearch, alias: str) -> str | None:
    """The concrete index an alias points at, or None when the alias does not exist."""
    found = es.options(ignore_status=404).indices.get_alias(name=alias)
    names = [k for k in found if k not in ("error", "status")]
    return names[0] if names else None


# The module or plugin that brings each script language script_score can use.
SCRIPT_LANG_PROVIDERS = {
    "painless": "lang-painless",                              # every full distribution
    "facetrec_vector": "io.facetrec.eslocal.VectorScriptPlugin",  # the local node (facetrec/local/elasticsearch_local/)
}
_detected_script_lang: "weakref.WeakKeyDictionary[Elasticsearch, str]" = weakref.WeakKeyDictionary()


def script_languages(client: Elasticsearch) -> set[str]:
    """The script languages of SCRIPT_LANG_PROVIDERS that every node has (``GET _nodes/plugins``)."""
    nodes = client.nodes.info(metric="plugins")["nodes"].values()
    names = [{p.get("name") for p in [*node.get("modules", []), *node.get("plugins", [])]} for node in nodes]
    return {lang for lang, provider in SCRIPT_LANG_PROVIDERS.items() if names and all(provider in n for n in names)}


def script_lang(client: Elasticsearch, setting: str = "auto", timeout_s: float | None = None) -> str:
    """The language of script_score scripts: ``setting`` unless it is ``auto``; then painless when
    the cluster has it, else facetrec_vector when it has that (detected once per client), else
    painless, so the row fails with Elasticsearch's reason. Credentials without the ``monitor``
    privilege cannot read ``_nodes/plugins``: then painless, as on every full distribution."""
    if setting != "auto":
        return setting
    if client in _detected_script_lang:
        return _detected_script_lang[client]
    try:
        found = script_languages(client.options(request_timeout=timeout_s) if timeout_s else client)
    except ApiError as exc:
        if exc.status_code not in (401, 403):
            raise
        found = {"painless"}
    lang = next((lang for lang in SCRIPT_LANG_PROVIDERS if lang in found), None)
    if lang is None:
        return "painless"  # not remembered: a plugin installed later is picked up
    _detected_script_lang[client] = lang
    return lang


# ---- Elasticsearch's error bodies ----------------------------------------------------------------

def error_type(exc: ApiError) -> str | None:
    """The ``error.type`` of an Elasticsearch error response (``index_not_found_exception``), or None."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    return error.get("type") if isinstance(error, dict) else None


def error_reason(error: Any) -> str:
    """The first root cause's reason of an ``error`` object (a response's, or one ``_msearch`` item's)."""
    if not isinstance(error, dict):
        return str(error)
    cause = (error.get("root_cause") or [error])[0]
    return str(cause.get("reason", error)) if isinstance(cause, dict) else str(cause)


@contextlib.contextmanager
def cluster_errors_as_unavailable():
    """Unreachable, timed out or overloaded (429/502/503/504) Elasticsearch: ClusterUnavailable (a 503)."""
    try:
        yield
    except (ESConnectionError, ConnectionTimeout) as exc:
        raise ClusterUnavailable(str(exc)) from exc
    except ApiError as exc:
        if exc.status_code in UNAVAILABLE_STATUSES:
            raise ClusterUnavailable(str(exc)) from exc
        raise

