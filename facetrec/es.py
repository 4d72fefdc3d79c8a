"""The one place that turns settings into an Elasticsearch client.

``ES_URL`` (with ``ES_API_KEY``, or ``ES_USERNAME``+``ES_PASSWORD``, and ``ES_CA_CERT``) points at a
real cluster. Without ``ES_URL`` the local node recorded by ``facetrec-es start`` is used.
"""

from __future__ import annotations

from elasticsearch import Elasticsearch

from facetrec.es_local import local_url
from facetrec.settings import Settings


class NoClusterConfigured(RuntimeError):
    pass


def resolve_url(settings: Settings) -> str:
    if settings.es_url:
        return settings.es_url
    url = local_url(settings.local_es_home)
    if url is None:
        raise NoClusterConfigured(
            f"ES_URL is not set and no local node is recorded in {settings.local_es_home}: "
            "start one with `facetrec-es start`, or set ES_URL to your cluster")
    return url


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


def make_client(settings: Settings, *, request_timeout: float | None = None, **options) -> Elasticsearch:
    """A client for the configured cluster. ``request_timeout`` defaults to the serving timeout."""
    timeout = request_timeout if request_timeout is not None else settings.es_request_timeout_s
    return Elasticsearch(resolve_url(settings), request_timeout=timeout, **client_options(settings), **options)


def alias_index(es: Elasticsearch, alias: str) -> str | None:
    """The concrete index an alias points at, or None when the alias does not exist."""
    found = es.options(ignore_status=404).indices.get_alias(name=alias)
    names = [k for k in found if k not in ("error", "status")]
    return names[0] if names else None


def has_painless(client: Elasticsearch) -> bool:
    """True when every node has the painless scripting module (full distributions do; the local
    node assembled from Maven Central does not)."""
    nodes = client.nodes.info(metric="plugins")["nodes"]
    if not nodes:
        return False
    return all(any(m.get("name") == "lang-painless" for m in node.get("modules", []))
               or any(p.get("name") == "lang-painless" for p in node.get("plugins", []))
               for node in nodes.values())
