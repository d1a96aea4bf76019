"""Debian's headless Chromium driven by Selenium through the system chromedriver.

Selenium Manager never runs: the driver and the browser are given by path, so nothing is
downloaded at test time. A test that needs the browser is skipped where Chromium is missing
(``./run test`` installs it).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    # Without these the browser's own background connections are refused on a closed network
    # and slow every start.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A microphone fed from a file, granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def require_chromium() -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (./run test installs them)")


_FIND_BUTTON = """
const find = (label) => [...document.querySelectorAll('button')].find(
    (b) => (b.getAttribute('aria-label') || b.textContent) === label
        && b.offsetParent !== null && !b.disabled);
"""
_FOCUS_BUTTON = (
    _FIND_BUTTON
    + """
const button = find(arguments[0]);
if (button) button.focus();
return Boolean(button);
"""
)


_NOTE = "const n = document.getElementById('room-note'); return n ? n.textContent : '';"


class Browser:
    """One headless Chromium with a fake microphone playing ``microphone`` (a 48 kHz WAV)."""

    def __init__(self, microphone: Path | None = None, width: int = 1280, height: int = 900):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        require_chromium()
        self.profile = tempfile.mkdtemp(prefix="salon-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        if microphone is not None:
            options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(
            service=Service(executable_path=CHROMEDRIVER), options=options
        )
        self.driver.set_script_timeout(30)
        if width < 500:
            # Chromium keeps windows at least 500 pixels wide; a phone is emulated instead.
            self.driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
            )

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args: Any) -> Any:
        """Run ``script`` whose last argument ``done`` is called with the result."""
        return self.driver.execute_async_script(script, *args)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``check`` until it returns something true (the page changes on its own)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"browser: timed out waiting for {what}; status {self.status()!r},"
                    f" note {self.js(_NOTE)!r}\n{self.console()}"
                )
            time.sleep(0.2)

    def status(self) -> str:
        return str(self.js("return document.getElementById('status').textContent"))

    def click_button(self, label: str) -> None:
        """Press the button with this accessible name the way a keyboard user does: focus it,
        then Enter."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.keys import Keys

        for _ in range(5):
            if not self.js(_FOCUS_BUTTON, label):
                raise AssertionError(f"no visible button {label!r}\n{self.console()}")
            try:
                # The page keeps focus on the same control when it redraws a list.
                self.driver.switch_to.active_element.send_keys(Keys.ENTER)
                return
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"button {label!r} kept being replaced")

    def has_button(self, label: str) -> bool:
        return bool(self.js(_FIND_BUTTON + "return Boolean(find(arguments[0]));", label))

    def take_recording(self) -> np.ndarray:
        """What the page played out since ``salonTest.recordStart()``: 48 kHz int16."""
        data = base64.b64decode(self.js("return window.salonTest.recordTake()"))
        return np.frombuffer(data, dtype=np.int16)

    def console(self) -> str:
        try:
            return "\n".join(str(entry) for entry in self.driver.get_log("browser"))
        except Exception as exc:
            return f"(no console: {exc})"
