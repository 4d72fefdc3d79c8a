"""The homepage page in a real headless Chromium (Debian's chromium + chromedriver via Selenium).

It opens on the first sample user's rows (no click), offers only the retrieval modes every
homepage row allows, and a select of the live values of each user filter. The MovieLens test
serves what `make demo` serves (catalogs/movielens-100k/rows.yaml over MovieLens-100k) and takes the
README's screenshot, docs/homepage.png (FACETREC_SCREENSHOT=<path> writes it elsewhere, =0 not at all).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from browser_support import serve, start_browser, wait_for_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOT = os.environ.get("FACETREC_SCREENSHOT", os.path.join(REPO, "docs", "homepage.png"))


@pytest.fixture(scope="module")
def server(published):
    settings, catalog, *_ = published
    httpd, url = serve(settings, catalog)
    yield url
    httpd.shutdown()


@pytest.fixture(scope="module")
def movielens_server(movielens):
    settings, catalog, *_ = movielens
    httpd, url = serve(settings, catalog)
    yield url
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_browser(tmp_path_factory)
    yield driver
    driver.quit()


def _first_sample_user(url: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/v1/sample-users?limit=1", timeout=10) as response:
        return json.loads(response.read())["user_ids"][0]


def test_the_demo_page_opens_on_the_first_users_rows_and_its_screenshot_is_taken(movielens_server, browser, movielens):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, catalog, items, _ = movielens
    first = _first_sample_user(movielens_server)
    browser.get(movielens_server + "/")
    sections = wait_for_rows(browser, len(catalog.homepage))               # no click: the page opens on them
    assert browser.find_element(By.ID, "user").get_attribute("value") == first
    assert browser.find_element(By.ID, "status").text.startswith(f"user {first} ·")
    assert [s.get_attribute("data-row-id") for s in sections] == list(catalog.homepage)
    comedy = sections[list(catalog.homepage).index("comedy")]
    assert comedy.find_element(By.CSS_SELECTOR, ".filter-text").text == "categories = Comedy"
    titles = [c.text for c in comedy.find_elements(By.CSS_SELECTOR, ".card .title")]
    assert len(titles) == 10 and set(titles) <= {i["title"] for i in items if "Comedy" in i["categories"]}
    # MovieLens has no user filters; the page says which facets the rows filter on.
    assert not browser.find_elements(By.CSS_SELECTOR, ".filter")
    facets = browser.find_element(By.ID, "facets").text
    assert "categories keyword_list, 18 values" in facets and "published_at date" in facets and "no user filters" in facets
    # Every demo row is knn only: that is all the page offers (before: script_score, a 400 on every row).
    mode = Select(browser.find_element(By.ID, "mode"))
    assert [o.text for o in mode.options] == ["knn"] and not browser.find_element(By.ID, "mode").is_enabled()
    if SCREENSHOT not in ("", "0"):
        browser.save_screenshot(SCREENSHOT)
        assert os.path.getsize(SCREENSHOT) > 10_000


def test_the_synthetic_page_filters_with_the_live_values_of_each_user_filter(server, browser, published):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _, catalog, items, users, *_ = published
    by_id = {r["item_id"]: r for r in items}
    browser.get(server + "/")
    wait_for_rows(browser, len(catalog.homepage))
    language = Select(browser.find_element(By.CSS_SELECTOR, 'select.filter[data-name="language"]'))
    counts = Counter(i["language"] for i in items)
    assert [o.text for o in language.options] == ["any", *sorted(counts, key=lambda v: (-counts[v], v))]  # most first
    country = Select(browser.find_element(By.CSS_SELECTOR, 'select.filter[data-name="country"]'))
    assert sorted(o.text for o in country.options[1:]) == sorted({c for i in items for c in i["country"]})
    assert [o.text for o in Select(browser.find_element(By.ID, "mode")).options] == ["knn"]

    user_box = browser.find_element(By.ID, "user")
    user_box.clear()
    user_box.send_keys(users[5]["user_id"])
    language.select_by_visible_text("es")
    browser.find_element(By.ID, "show").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text.startswith(
        f"user {users[5]['user_id']} ·"))
    sections = wait_for_rows(browser, len(catalog.homepage))
    audiobooks = sections[list(catalog.homepage).index("audiobooks")]
    titles = {c.text for c in audiobooks.find_elements(By.CSS_SELECTOR, ".card .title")}
    assert len(titles) == 10
    assert titles <= {r["title"] for r in by_id.values() if r["item_format"] == "audiobook" and r["language"] == "es"}


def test_page_shows_a_bad_user_id_as_an_error(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    wait_for_rows(browser, 6)    # the opening page is in; then ask for a bad user
    user_box = browser.find_element(By.ID, "user")
    user_box.clear()
    user_box.send_keys("x" * 200)
    browser.find_element(By.ID, "show").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#status .error"))
    assert "400" in browser.find_element(By.CSS_SELECTOR, "#status .error").text
    assert "user_id" in browser.find_element(By.CSS_SELECTOR, "#status .error").text


def test_a_mode_is_offered_only_when_every_homepage_row_allows_it(published):
    from app.page import page_context
    from facetrec.catalog.rows import RowCatalog

    _, catalog, *_ = published
    raw = {"rows": [{"id": "a", "caller_modes": ["script_score"]}, {"id": "b", "caller_modes": ["script_score"]}]}
    schema = catalog.schema
    assert page_context(RowCatalog.from_dict(raw, schema), "knn", None)["modes"] == [("", "knn"),
                                                                                    ("script_score", "script_score")]
    raw["rows"][1] = {"id": "b"}
    assert page_context(RowCatalog.from_dict(raw, schema), "knn", None)["modes"] == [("", "knn")]
    raw["rows"][1] = {"id": "b", "retrieval": "script_score"}
    assert page_context(RowCatalog.from_dict(raw, schema), "knn", None)["modes"] == [("", "each row's own"),
                                                                                    ("script_score", "script_score")]


def test_the_docs_page_renders_the_openapi_document(server, browser):
    """Swagger UI (the PyPI package swagger-ui-bundle, served by the service) renders app/openapi.yaml."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("facetrec homepage API")
    paths = {e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/users/{user_id}/homepage", "/v1/rows", "/v1/facets", "/v1/users/{user_id}/events"} <= paths, paths
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper")
