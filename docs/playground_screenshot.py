"""Take docs/playground.png: the playground's exact-vs-none view on SmolLM2-135M, in headless Chromium.

    .venv/bin/python docs/playground_screenshot.py

Starts `genloom serve --model smollm2-135m` on a free loopback port, types a prompt cut mid-word,
generates greedily with healing exact and none side by side, hovers the first healed token so its
logprobs show, and saves the page.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

OUT = Path(__file__).resolve().parent / "playground.png"
PROMPT = "# load the data\nimport num"


def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("genloom")
    server = subprocess.Popen([str(exe), "serve", "--model", "smollm2-135m", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1100,1000"):
            opts.add_argument(arg)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            box = browser.find_element(By.ID, "prompt")
            browser.execute_script("arguments[0].value = arguments[1]", box, PROMPT)
            browser.find_element(By.ID, "max_tokens").clear()
            browser.find_element(By.ID, "max_tokens").send_keys("24")
            browser.find_element(By.ID, "generate").click()
            WebDriverWait(browser, 120).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
            token = browser.find_elements(By.CSS_SELECTOR, '.pane[data-heal="exact"] .tok')[0]
            ActionChains(browser).move_to_element(token).perform()
            time.sleep(0.3)
            browser.save_screenshot(str(OUT))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
