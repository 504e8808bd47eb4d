"""The playground page in a real browser: Debian's Chromium, headless, driven by Selenium.

The browser is not optional here: `make test` installs chromium and chromium-driver (Makefile), and
these tests fail, never skip, when they are missing.
"""

from __future__ import annotations

import shutil
import struct
import time

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from test_api import Slow

WAIT = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "the browser tests need Debian's chromium and chromium-driver (make test installs them)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=opts)
    yield b
    b.quit()


def open_page(browser, url: str, *, width: int = 1200) -> None:
    browser.set_window_size(width, 900)
    browser.get(url + "/")
    WebDriverWait(browser, WAIT).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))


def set_prompt(browser, text: str) -> None:
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    browser.execute_script("arguments[0].value = arguments[1]", box, text)


def set_compare(browser, on: bool) -> None:
    box = browser.find_element(By.ID, "compare")
    if box.is_selected() != on:
        box.click()


def wait_state(browser, state: str) -> None:
    WebDriverWait(browser, WAIT).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state)
    browser.execute_script("document.body.dataset.state = ''")


def completion(url: str, prompt: str, heal: str) -> str:
    r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "heal": heal, "max_tokens": 32,
                                                   "temperature": 0}, timeout=60)
    return r.json()["choices"][0]["text"]


def test_page_loads_with_no_console_errors(browser, server):
    open_page(browser, server.url)
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")] == ["tiny"]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_generate_streams_the_continuation_as_the_api_gives_it(browser, server):
    open_page(browser, server.url)
    set_compare(browser, False)
    for prompt in ("hello wor", "广州的白"):
        set_prompt(browser, prompt)
        browser.find_element(By.ID, "prompt").send_keys(Keys.ENTER)  # Enter generates
        wait_state(browser, "done")
        shown = browser.execute_script("return document.querySelector('.pane .output').textContent")
        assert shown == completion(server.url, prompt, "exact")  # characters split across tokens arrive whole
        tokens = browser.find_elements(By.CSS_SELECTOR, ".pane .tok")
        assert len(tokens) > 1 and all(t.get_attribute("data-tip") for t in tokens)  # chunk by chunk, with logprobs
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_exact_and_none_side_by_side(browser, server, tmp_path):
    open_page(browser, server.url)
    set_compare(browser, True)
    set_prompt(browser, "import num")
    browser.find_element(By.ID, "generate").click()
    wait_state(browser, "done")
    read = "return document.querySelector(arguments[0]).textContent"
    exact = browser.execute_script(read, '.pane[data-heal="exact"] .output')
    none = browser.execute_script(read, '.pane[data-heal="none"] .output')
    assert exact == completion(server.url, "import num", "exact")
    assert none == completion(server.url, "import num", "none")
    assert exact != none
    mark = browser.find_element(By.CSS_SELECTOR, '.pane[data-heal="exact"] mark.backoff')
    assert "import num".endswith(mark.text) and mark.text
    assert not browser.find_elements(By.CSS_SELECTOR, '.pane[data-heal="none"] mark.backoff')
    token = browser.find_elements(By.CSS_SELECTOR, '.pane[data-heal="exact"] .tok')[0]
    ActionChains(browser).move_to_element(token).perform()
    tip = browser.find_element(By.ID, "tip")
    WebDriverWait(browser, WAIT).until(lambda b: tip.is_displayed())
    assert "logprob" in tip.text
    shot = tmp_path / "compare.png"
    browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert struct.unpack(">II", data[16:24]) == tuple(browser.execute_script(
        "return [window.innerWidth, window.innerHeight]"))  # the viewport, as a PNG


def test_stop_cancels_the_request(browser, tiny, serve):
    model, tok = tiny
    slow = serve(Slow(model), tok, max_tokens=64)
    try:
        open_page(browser, slow.url)
        set_compare(browser, False)
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "max_tokens").send_keys("64")
        set_prompt(browser, "hello")
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, WAIT).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".pane .tok")) >= 2)
        browser.find_element(By.ID, "stopbtn").click()
        wait_state(browser, "stopped")
        deadline = time.monotonic() + 10
        while slow.served.engine.load()["rows"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.served.engine.load()["rows"] == 0  # the server dropped the row
        shown = len(browser.find_elements(By.CSS_SELECTOR, ".pane .tok"))
        assert shown < 64
        time.sleep(0.3)
        assert len(browser.find_elements(By.CSS_SELECTOR, ".pane .tok")) == shown
        assert browser.find_element(By.ID, "generate").is_enabled()
    finally:
        slow.stop()


def test_a_too_long_prompt_shows_the_servers_error(browser, server):
    open_page(browser, server.url)
    set_compare(browser, False)
    set_prompt(browser, "hello " * 100)
    browser.find_element(By.ID, "generate").click()
    box = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT).until(lambda b: box.is_displayed())
    assert "limit of 64" in box.text and "400" in box.text


def test_keyboard_only(browser, server):
    open_page(browser, server.url)  # a fresh page: the first Tab goes to the first control
    order = []
    for _ in range(14):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        order.append(browser.switch_to.active_element.get_attribute("id"))
    assert order[:2] == ["model", "prompt"]
    assert order.index("generate") > order.index("heal") > order.index("prompt")
    # Tab back to the prompt, type, Enter: a generation runs
    while browser.switch_to.active_element.get_attribute("id") != "prompt":
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    ActionChains(browser).send_keys(Keys.END, "x", Keys.ENTER).perform()
    wait_state(browser, "done")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".pane .tok")) > 1
    # Tab on to the compare box and the Generate button: Space toggles, Enter submits
    while browser.switch_to.active_element.get_attribute("id") != "compare":
        ActionChains(browser).send_keys(Keys.TAB).perform()
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    while browser.switch_to.active_element.get_attribute("id") != "generate":
        ActionChains(browser).send_keys(Keys.TAB).perform()
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_state(browser, "done")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".pane")) == 1  # compare was on: Space turned it off


def test_narrow_window(browser, server):
    open_page(browser, server.url, width=400)
    set_compare(browser, True)
    set_prompt(browser, "import num")
    browser.find_element(By.ID, "generate").click()
    wait_state(browser, "done")
    panes = browser.find_elements(By.CSS_SELECTOR, ".pane")
    assert len(panes) == 2
    a, b = (p.rect for p in panes)
    assert a["x"] == b["x"] and b["y"] > a["y"]  # stacked, not side by side
    width = browser.execute_script("return window.innerWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll
    assert browser.find_element(By.ID, "generate").is_displayed()
