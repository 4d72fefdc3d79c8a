"""The homepage page in a real headless Chromium (Debian's chromium + chromedriver via Selenium):
load the page, pick a user, set a filter, click, and see the rows render as carousels."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server(published):
    from werkzeug.serving import make_server

    settings, catalog, *_ = published
    app = create_app(settings.replace(es_request_timeout_s=5.0), catalog)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_renders_rows_for_a_picked_user(server, browser, published):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, catalog, items, users, *_ = published
    by_id = {r["item_id"]: r for r in items}
    browser.get(server + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#users option"))  # sample users loaded from the API

    user_box = browser.find_element(By.ID, "user")
    user_box.clear()
    user_box.send_keys(users[5]["user_id"])
    browser.find_element(By.CSS_SELECTOR, 'input.filter[data-name="language"]').send_keys("en")
    browser.find_element(By.ID, "show").click()

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.row")) == len(catalog.homepage))
    sections = browser.find_elements(By.CSS_SELECTOR, "section.row")
    assert [s.get_attribute("data-row-id") for s in sections] == list(catalog.homepage)
    assert sections[0].find_element(By.TAG_NAME, "h2").text.startswith("Recommended for you")
    titles = [c.text for c in sections[1].find_elements(By.CSS_SELECTOR, ".card .title")]
    assert len(titles) == 10
    audiobook_titles = {r["title"] for r in by_id.values() if r["item_format"] == "audiobook" and r["language"] == "en"}
    assert set(titles) <= audiobook_titles
    assert EC.text_to_be_present_in_element((By.ID, "status"), users[5]["user_id"])(browser)
    shot = os.environ.get("FACETREC_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)


def test_page_shows_a_bad_filter_as_an_error(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    browser.find_element(By.ID, "user").send_keys("x" * 200)
    browser.find_element(By.ID, "show").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#status .error"))
    assert "400" in browser.find_element(By.CSS_SELECTOR, "#status .error").text
    assert "user_id" in browser.find_element(By.CSS_SELECTOR, "#status .error").text
