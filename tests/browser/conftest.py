"""Browser tests of the console: Debian's chromium (``/usr/bin/chromium``, installed by ``make test``)
driven by Playwright against the API served by uvicorn on a free port, with its own Redis prefix and
model registry (the service test fixtures).

``pytest tests/browser --console-screenshots docs/console`` also writes a screenshot of every page.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from harness.embedded import Service, create_topics
from infra.settings import Settings
from tests.service.conftest import ADMIN_KEY, live_server, model_bytes, registry, settings

__all__ = ["model_bytes", "registry", "settings"]  # fixtures shared with the service tests

CHROMIUM = Path("/usr/bin/chromium")


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread while it
# is open, and the async tests collected after this directory need the thread's loop free.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if exe is None:
        pytest.fail("no chromium: `make test` installs Debian's (apt-get install -y chromium)")
    with sync_playwright() as p:
        # --no-sandbox: CI and this box run as root, where chromium refuses its sandbox.
        b = p.chromium.launch(executable_path=str(exe), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def server(settings: Settings, broker: Service, unique: str) -> Iterator[str]:
    # With the session broker, so that claims made in a test are recorded (and refused when sold out).
    # The topic is made from another thread: Playwright's sync API holds this thread's event loop.
    topic = f"member-events-{unique}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create_topics(broker.url, {topic: 4})).result()
    fb = settings.model_copy(update={"kafka_bootstrap": broker.url, "events_topic": topic})
    with live_server(fb) as base:
        yield base


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    ctx = browser.new_context(base_url=server, viewport={"width": 1360, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # An API answering 4xx is logged by chromium as "Failed to load resource": expected in the tests of
    # refusals. Anything else logged as an error, or an uncaught exception, fails the test.
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    pg.set_default_timeout(10_000)
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


def login(page: Page, key: str = ADMIN_KEY) -> None:
    page.goto("/console/login")
    page.fill("#api-key", key)
    page.click("#login-submit")


@pytest.fixture
def admin_page(page: Page) -> Page:
    login(page)
    page.wait_for_url("**/console/catalogue")
    page.wait_for_selector("#offers tbody tr")
    return page


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path | None:
    out = request.config.getoption("--console-screenshots")
    if out is None:
        return None
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path
