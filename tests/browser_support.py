"""What the browser tests share: a service of a catalog on a free port (werkzeug, in a thread), a
headless Debian chromium driven by Selenium, and the wait for a page's rows."""

from __future__ import annotations

import shutil
import threading

import pytest

from app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def serve(settings, catalog):
    from werkzeug.serving import make_server

    app = create_app(settings.replace(es_request_timeout_s=5.0), catalog)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}"


def start_browser(tmp_path_factory):
    """A headless chromium (skips the test, saying why, where Debian's chromium is not installed)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1100", "--hide-scrollbars", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    return driver


def wait_for_rows(browser, count: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.row")) == count
        and all(s.find_elements(By.CSS_SELECTOR, ".card") for s in d.find_elements(By.CSS_SELECTOR, "section.row")))
    return browser.find_elements(By.CSS_SELECTOR, "section.row")


