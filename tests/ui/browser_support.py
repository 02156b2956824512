"""A real headless Chromium (Debian's chromium + chromium-driver, through selenium) and the
console served by uvicorn in a thread, for the review console's end-to-end tests.

Without Chromium the browser tests skip with the reason; under CI (`CI` set) or with
`ENGINE_REQUIRE_BROWSER=1` a missing browser fails them instead: there they must run.
Screenshots go to `ENGINE_UI_SCREENSHOTS` when it names a folder."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
# resolved now, at collection: each test runs in its own working directory
SCREENSHOTS = Path(os.environ["ENGINE_UI_SCREENSHOTS"]).resolve() if os.environ.get("ENGINE_UI_SCREENSHOTS") else None


def browser_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("ENGINE_REQUIRE_BROWSER") == "1"


def find(candidates: tuple[str, ...], name: str) -> str | None:
    for path in candidates:
        if Path(path).is_file():
            return path
    return shutil.which(name)


def missing_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if find(CHROMIUM, "chromium") is None:
        return "no Chromium (apt-get install chromium chromium-driver)"
    if find(DRIVER, "chromedriver") is None:
        return "no chromedriver (apt-get install chromium-driver)"
    return None


def start_browser(*extra: str) -> Any:
    """A headless Chromium; `extra`: more command-line switches."""
    reason = missing_reason()
    if reason:
        if browser_required():
            pytest.fail(f"browser tests must run here (CI / ENGINE_REQUIRE_BROWSER): {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(find(CHROMIUM, "chromium"))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run", "--disable-background-networking",
                "--disable-sync", "--disable-component-update", "--hide-scrollbars", *extra):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(find(DRIVER, "chromedriver"))), options=options)


class LiveServer:
    """An ASGI app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any):
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.sock = sock

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the console did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def screenshot(driver: Any, folder: Path, name: str) -> Path:
    """Save a full-page PNG to `folder` (and to ENGINE_UI_SCREENSHOTS when set)."""
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
    driver.set_window_size(1280, min(int(height) + 40, 2400))
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)
    return path


def report_timings(timings: dict[str, list[float]]) -> None:
    """Print what the browser tests measured (seen with -s); the benchmark
    (examples/benchmarks/ui_console.py) is where timings are kept."""
    for name, values in timings.items():
        print(f"chromium {name}: {', '.join(f'{v * 1000:.0f} ms' for v in values)}")
