"""The ``/targets`` page of a real ``trawl run``, in headless Chromium (Debian's) driven by
Selenium: it loads, shows an up and a down target with the down one's error, filters by
health and by text, works from the keyboard, refreshes live and fits a 400 px screen.

``TRAWL_SCREENSHOT=1`` also saves ``docs/images/targets.png`` (and ``targets-narrow.png``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.servers import free_port, require_binary, wait_until
from tests.servers.trawl_process import TargetServer, TrawlProcess, closed_port, scrape_config

pytestmark = pytest.mark.slow

DOCS_IMAGES = Path(__file__).parent.parent / "docs" / "images"
EXPOSITION = "# TYPE node_load1 gauge\nnode_load1 0.42\n# TYPE up_total counter\nup_total 7\n"
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
    "--disable-extensions", "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--metrics-recording-only", "--hide-scrollbars", "--force-device-scale-factor=1",
)


@pytest.fixture(scope="module")
def instance(tmp_path_factory) -> Iterator[tuple[TrawlProcess, str, str, TargetServer]]:
    """A running trawl with one up and one down target:
    ``(process, up_url, down_url, up_server)``."""
    workdir = tmp_path_factory.mktemp("targets_page")
    port = free_port()
    with TargetServer(200, EXPOSITION) as up:
        down = f"127.0.0.1:{closed_port()}"
        config = scrape_config(port, [up.address, down], workdir / "out.jsonl",
                               labels={"team": "infra", "env": "test"})
        with TrawlProcess(workdir, config, http_port=port) as trawl:
            up_url, down_url = f"http://{up.address}/metrics", f"http://{down}/metrics"
            trawl.wait_health({up_url: "up", down_url: "down"})
            yield trawl, up_url, down_url, up


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    # Debian's browser and driver, given by path: Selenium Manager (which could download
    # them) is never needed, and is told to stay offline anyway.
    os.environ.setdefault("SE_OFFLINE", "true")
    chromium = require_binary("/usr/bin/chromium")
    driver_path = require_binary("/usr/bin/chromedriver")
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.add_argument("--window-size=1100,560")
    service = Service(executable_path=driver_path, log_output=os.devnull)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def rows(driver) -> dict[str, dict[str, str]]:
    """The visible target rows: scrape URL → {health, error}."""
    out = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#pools tbody tr"):
        if not tr.is_displayed():
            continue
        url = tr.find_element(By.CSS_SELECTOR, "td.url").text
        out[url] = {"health": tr.get_attribute("data-health"),
                    "error": tr.find_element(By.CSS_SELECTOR, "td.error").text}
    return out


def press(driver, keys: str) -> None:
    """Type into whatever has the focus, as a person at the keyboard would."""
    ActionChains(driver).send_keys(keys).perform()


def load(driver, url: str, count: int) -> None:
    driver.get(url)
    wait_until(lambda: len(rows(driver)) == count, 15, f"{count} target rows on {url}")


def test_page_shows_up_and_down_targets_with_the_error(instance, browser):
    trawl, up_url, down_url, _ = instance
    load(browser, f"{trawl.url}/targets", 2)
    shown = rows(browser)
    assert shown[up_url] == {"health": "up", "error": ""}
    api_error = {t["scrapeUrl"]: t["lastError"] for t in trawl.targets()}[down_url]
    assert shown[down_url]["health"] == "down"
    assert "Connection refused" in shown[down_url]["error"]
    assert shown[down_url]["error"] == api_error
    summary = browser.find_element(By.CSS_SELECTOR, "details[data-pool=node] > summary").text
    assert summary == "node (1/2 up)"
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("2 targets, 1 down")
    labels = browser.find_element(By.CSS_SELECTOR, "#pools tbody tr td.labels").text
    assert 'team="infra"' in labels
    if os.environ.get("TRAWL_SCREENSHOT"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(DOCS_IMAGES / "targets.png"))


def test_filters_by_health_and_by_text(instance, browser):
    trawl, up_url, down_url, _ = instance
    load(browser, f"{trawl.url}/targets", 2)
    health = Select(browser.find_element(By.ID, "health"))
    health.select_by_value("down")
    assert list(rows(browser)) == [down_url]
    assert browser.current_url.endswith("?health=down")
    health.select_by_value("up")
    assert list(rows(browser)) == [up_url]
    health.select_by_value("")
    assert set(rows(browser)) == {up_url, down_url}

    q = browser.find_element(By.ID, "q")
    q.send_keys("refused")  # the down target's error
    assert list(rows(browser)) == [down_url]
    q.clear()
    q.send_keys(up_url.split("//")[1].split("/")[0])  # the up target's address
    assert list(rows(browser)) == [up_url]
    q.clear()
    q.send_keys('team="infra" env=test')  # every word must match a label
    assert set(rows(browser)) == {up_url, down_url}
    q.clear()
    q.send_keys("no-such-target")
    assert rows(browser) == {}
    assert "No target matches the filter" in browser.find_element(By.ID, "pools").text

    # A filter in the address is applied when the page loads.
    load(browser, f"{trawl.url}/targets?health=down", 1)
    assert list(rows(browser)) == [down_url]


def test_keyboard_only(instance, browser):
    trawl, up_url, down_url, _ = instance
    load(browser, f"{trawl.url}/targets", 2)
    focused = []
    for _ in range(6):  # from the top of a fresh page: skip link, health, filter ...
        press(browser, Keys.TAB)
        focused.append(browser.switch_to.active_element.get_attribute("id") or
                       browser.switch_to.active_element.tag_name)
        if focused[-1] == "q":
            break
    assert focused[-1] == "q", f"Tab went through {focused}, never reached the filter"
    assert focused.index("health") < focused.index("q")
    press(browser, "refused")
    assert list(rows(browser)) == [down_url]
    press(browser, Keys.ESCAPE)  # clears the filter
    assert set(rows(browser)) == {up_url, down_url}

    # Tab on to the pool's summary, then "/" jumps back to the filter.
    for _ in range(3):
        press(browser, Keys.TAB)
        if browser.switch_to.active_element.tag_name == "summary":
            break
    assert browser.switch_to.active_element.tag_name == "summary"
    press(browser, "/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"

    # The pool's table folds and unfolds from the keyboard, and keeps its state (and the
    # focus) across the live refresh.
    for _ in range(3):
        press(browser, Keys.TAB)
        if browser.switch_to.active_element.tag_name == "summary":
            break
    assert browser.switch_to.active_element.tag_name == "summary"
    press(browser, Keys.ENTER)
    assert rows(browser) == {}
    browser.execute_script("refresh()")
    wait_until(lambda: browser.execute_script(
        "return document.querySelector('details[data-pool=node]').open") is False, 5,
        "the folded pool to stay folded after a refresh")
    assert browser.switch_to.active_element.tag_name == "summary"
    press(browser, Keys.ENTER)
    assert len(rows(browser)) == 2


def test_live_refresh_follows_the_instance(instance, browser):
    trawl, up_url, _, server = instance
    load(browser, f"{trawl.url}/targets", 2)
    first = browser.find_element(By.ID, "updated").text
    assert "updated" in first
    try:
        # The target fails: the page shows it down, with its error, without being reloaded.
        server.status = 503
        wait_until(lambda: rows(browser)[up_url]["health"] == "down", 15,
                   "the page to show the target down")
        assert rows(browser)[up_url]["error"] == \
            "server returned HTTP status 503 Service Unavailable"
        assert browser.find_element(By.ID, "summary").text == "2 targets, 2 down"
    finally:
        server.status = 200
    wait_until(lambda: rows(browser)[up_url] == {"health": "up", "error": ""}, 15,
               "the page to show the target up again")
    assert browser.find_element(By.ID, "updated").text != first
    assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1
    # The Live button pauses and resumes the refresh.
    live = browser.find_element(By.ID, "live")
    live.click()
    assert (live.get_attribute("aria-pressed"), live.text) == ("false", "Paused")
    assert browser.execute_script("return timer") is None  # no refresh is scheduled
    browser.execute_script("window.__asked = 0; const f = window.fetch;"
                           "window.fetch = (...a) => { window.__asked++; return f(...a); };")
    live.click()
    assert (live.get_attribute("aria-pressed"), live.text) == ("true", "Live")
    wait_until(lambda: browser.execute_script("return window.__asked") >= 1, 5,
               "a refresh on resuming")
    assert browser.execute_script("return timer") is not None


def test_narrow_screen(instance, browser):
    trawl = instance[0]
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 400, "height": 820, "deviceScaleFactor": 1, "mobile": True})
    try:
        load(browser, f"{trawl.url}/targets", 2)
        assert browser.execute_script("return window.innerWidth") == 400
        # Nothing scrolls sideways; the table is a list of cards, each cell labelled.
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 400
        assert not browser.find_element(By.CSS_SELECTOR, "#pools thead").is_displayed()
        error = browser.find_element(By.CSS_SELECTOR, "tr[data-health=down] td.error")
        box = error.rect
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400
        assert "Connection refused" in error.text
        before = browser.execute_script(
            "return getComputedStyle(arguments[0], '::before').content", error)
        assert before == '"Error: "'
        q = browser.find_element(By.ID, "q")
        assert q.rect["x"] + q.rect["width"] <= 400
        if os.environ.get("TRAWL_SCREENSHOT"):
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(DOCS_IMAGES / "targets-narrow.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
