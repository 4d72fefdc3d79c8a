"""A schema-driven fuzzer (schemathesis, tests/fuzz_support.py) against the service on each bundled
catalog: every request the served document says is valid is accepted, no 5xx but the documented
503s, every answer as the document describes it. The bookstore (the third catalog) is fuzzed in
tests/test_your_catalog.py, after its pipeline run."""

from __future__ import annotations

import pytest
from fuzz_support import assert_clean, fuzz

from app import create_app
from facetrec.catalog.rows import RowCatalog
from facetrec.es import script_languages


@pytest.fixture(scope="module")
def sent_batches():
    """Per published pair: the event batches the fuzz runs sent to it (its user index keeps them)."""
    return {"movielens": {}, "synthetic": {}}


@pytest.fixture(scope="module")
def catalogs(movielens, events_pair):
    """Both bundled catalogs, each with a service (as tests/test_api_contract.py has them)."""
    ml_settings, ml_catalog, *_ = movielens
    syn_settings, syn_catalog, *_ = events_pair
    return {"movielens": create_app(ml_settings.replace(es_request_timeout_s=5.0), ml_catalog),
            "synthetic": create_app(syn_settings.replace(es_request_timeout_s=5.0), syn_catalog)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["movielens", "synthetic"])
def test_the_fuzzer_finds_no_valid_request_refused_and_no_server_error(catalogs, sent_batches, name):
    assert_clean(fuzz(catalogs[name], batches=sent_batches[name]))


def _odd_rows(schema) -> RowCatalog:
    """Rows of shapes the bundled configs lack, over the synthetic pair: every row allows a second
    mode (so a mode other than the default is common to all rows, which ad-hoc rows do not take),
    a homepage whose rows at their largest size pass the page's 200 items, and rows larger by
    default than the smallest row's limit."""
    small = [{"id": f"small_{n}", "size": 15, "filter": [{"term": {"item_format": fmt}}]}
             for n, fmt in enumerate(["ebook", "audiobook", "podcast", "ebook"])]
    small += [{"id": f"lang_{lang}", "size": 15, "filter": [{"term": {"language": lang}}]} for lang in ("en", "es")]
    small += [{"id": "recent", "size": 15, "filter": [{"range": {"published_at": {"gte": "2015-01-31"}}}]},
              {"id": "anything", "size": 15}]
    large = [{"id": f"large_{n}", "size": 60, "max_size": 100} for n in range(3)]
    return RowCatalog.from_dict({"caller_modes": ["script_score"], "rows": small + large,
                                 "homepage": [r["id"] for r in small]}, schema)


@pytest.mark.slow
def test_the_fuzzer_finds_nothing_on_rows_of_odd_shapes(es, events_pair, sent_batches):
    if not script_languages(es):
        pytest.skip("this cluster has neither painless nor the facetrec_vector plugin (rows ask script_score)")
    settings, catalog, *_ = events_pair
    app = create_app(settings.replace(es_request_timeout_s=5.0), _odd_rows(catalog.schema))
    assert_clean(fuzz(app, batches=sent_batches["synthetic"]))   # the synthetic pair, other rows
