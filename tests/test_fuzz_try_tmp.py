import pytest
from fuzz_support import assert_clean, fuzz

from app import create_app


@pytest.fixture(scope="module")
def catalogs(movielens, events_pair):
    ml_settings, ml_catalog, *_ = movielens
    syn_settings, syn_catalog, *_ = events_pair
    return {"movielens": create_app(ml_settings.replace(es_request_timeout_s=5.0), ml_catalog),
            "synthetic": create_app(syn_settings.replace(es_request_timeout_s=5.0), syn_catalog)}

@pytest.mark.parametrize("name", ["movielens", "synthetic"])
def test_fuzz(catalogs, name):
    assert_clean(fuzz(catalogs[name]))
