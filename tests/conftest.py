"""Fixtures shared by every test that touches Elasticsearch.

There is no fake: with ``ES_URL`` set the tests use that cluster, otherwise a real local node is
started once per session on a free port (never 9200) and stopped at the end.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from facetrec.catalog.rows import RowCatalog
from facetrec.es import make_client
from facetrec.local import node as es_local
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
    from ingest.embedding.spark import make_spark_session

    session = make_spark_session("facetrec-tests")
    yield session
    session.stop()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def published(es, es_settings):
    """One generation of a small synthetic catalog behind module-unique aliases (exact: flat)."""
    prefix = f"svc-{uuid.uuid4().hex[:8]}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="flat")
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    items, users, item_vectors, user_vectors = embedding_records(n_items=3000, n_users=100, dims=64, seed=11)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version="m", generation="20260101-000001",
                progress=False, sample_users=3)
    yield settings, catalog, items, users, item_vectors, user_vectors
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for family in ("item_index", "user_index", "user_index_events"):
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-{family}-template")


EVENTS_MODEL = "m-events"


@pytest.fixture(scope="module")
def events_pair(es, es_settings, tmp_path_factory):
    """(Per test module) one published pair (flat, exact) whose users' vectors come from SeededUserModel, with its
    exported encoder registered under a models root."""
    from facetrec.model import user_encoder
    from ingest.embedding.seeded_encoder import SeededUserModel
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("events")
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="flat", models_root=root / "models")
    items, users, item_vectors, _ = embedding_records(n_items=800, n_users=40, dims=64, seed=21)
    model = SeededUserModel(np.asarray(item_vectors, np.float32), [i["item_id"] for i in items])
    users = [{**u, "user_embed": model.user_vector(u["seen_item_ids"])} for u in users]
    model.export(root / "embeddings")
    user_encoder.register(root / "embeddings", settings.models_root, EVENTS_MODEL)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version=EVENTS_MODEL, generation="20260101-000001",
                progress=False, sample_users=3)
    yield settings, catalog, items, users, model
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


MOVIELENS_MODEL = "ml-svd"


@pytest.fixture(scope="session")
def movielens_model(es_settings, tmp_path_factory):
    """MovieLens-100k records without training (tests/catalogs.py) and a models root holding their
    exported user encoder (computed once per session)."""
    from catalogs import movielens_records
    from facetrec.model import user_encoder

    root = tmp_path_factory.mktemp("movielens")
    items, users, _, model = movielens_records(es_settings.vector_dims)
    model.export(root / "embeddings")
    user_encoder.register(root / "embeddings", root / "models", MOVIELENS_MODEL)
    return items, users, root / "models"


@pytest.fixture(scope="module")
def movielens(es, es_settings, movielens_model):
    """(Per test module: events change users) MovieLens-100k published as the demo publishes it
    (catalogs/movielens-100k/rows.yaml, the same ids and facets), with SVD item vectors and a seeded, exported
    user tower instead of training, behind module-unique aliases."""
    from ingest.indexing.reindex import run_reindex

    items, users, models_root = movielens_model
    prefix = f"ml-{uuid.uuid4().hex[:8]}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="flat", models_root=models_root)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "movielens-100k", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version=MOVIELENS_MODEL,
                generation="20260101-000001", progress=False, sample_users=3)
    yield settings, catalog, items, users
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])
