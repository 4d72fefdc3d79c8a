"""Fixtures shared by every test that touches Elasticsearch.

There is no fake: with ``ES_URL`` set the tests use that cluster, otherwise a real local node is
started once per session on a free port (never 9200) and stopped at the end.
"""

from __future__ import annotations

import uuid

import pytest

from facetrec import es_local
from facetrec.es import make_client
from facetrec.settings import Settings


@pytest.fixture(scope="session")
def es_settings(tmp_path_factory) -> Settings:
    settings = Settings.from_env()
    if settings.es_url:
        yield settings
        return
    home = tmp_path_factory.mktemp("es-local")
    state = es_local.start(nodes=1, port=es_local.find_free_base_port(), home=home, heap="1g", timeout=180)
    try:
        yield settings.replace(es_url=state.url, local_es_home=home)
    finally:
        es_local.stop(home)


@pytest.fixture(scope="session")
def es(es_settings):
    client = make_client(es_settings, request_timeout=60)
    yield client
    client.close()


@pytest.fixture
def unique(es):
    """A unique name prefix for this test; every index, template and alias under it is removed after."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    yield prefix
    es.indices.delete(index=f"{prefix}*", ignore_unavailable=True, allow_no_indices=True, expand_wildcards="all")
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


@pytest.fixture(scope="session")
def spark():
    """A real local SparkSession (two cores, no UI)."""
    import os
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from ingest.spark import make_spark_session

    session = make_spark_session("facetrec-tests")
    yield session
    session.stop()
