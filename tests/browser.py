"""Selenium driving Debian's Chromium (``make browsers`` installs it) for the browser tests.

Nothing is downloaded: the driver and the browser are the system's, named explicitly, so
Selenium Manager never runs. Without them the tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")
WINDOW = (1280, 900)
SCREENSHOTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "screenshots"


@pytest.fixture(name="browser")
def browser_fixture():
    """A headless Chromium WebDriver, 1280×900, quit after the test."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        reason = f"{' and '.join(missing)} not installed (`make browsers` installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument("--window-size={},{}".format(*WINDOW))
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*WINDOW)
    yield driver
    driver.quit()


def fit_window_to_page(driver: WebDriver, max_height: int = 8000) -> None:
    """Make the viewport as tall as the document, so lazy images load and screenshots show all."""
    height = driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
    )
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(WINDOW[0], min(max(height + chrome, WINDOW[1]), max_height))


def loaded_images(driver: WebDriver, selector: str = "img", timeout: float = 10) -> list[dict]:
    """Wait until the rendered images matching ``selector`` finished loading; src, alt, width.

    Images that are not rendered (``display: none``) are left out: lazy ones never load.
    """
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".filter(i => i.getClientRects().length > 0)"
        ".map(i => ({src: i.currentSrc || i.src, alt: i.alt, complete: i.complete,"
        " width: i.naturalWidth}))"
    )
    WebDriverWait(driver, timeout).until(
        lambda d: all(image["complete"] for image in d.execute_script(script, selector))
    )
    return driver.execute_script(script, selector)


def save_screenshot(driver: WebDriver, name: str) -> Path:
    """A full-page screenshot under ``bench/results/screenshots/``; the window is restored."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    fit_window_to_page(driver)
    loaded_images(driver)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(*WINDOW)
    return path
