"""A real headless Chromium for dashboard and docs tests, driven by Playwright.

The browser is Debian's `chromium` (`KELPIE_TEST_CHROMIUM`, default /usr/bin/chromium;
`.ci/run` installs it); Playwright never downloads one of its own. Every request a page makes
is intercepted: one to any host but 127.0.0.1 is refused and fails the test, so a page that
works here works air-gapped. A JavaScript error on a page fails the test too.

Screenshots go to `test-artifacts/` (`KELPIE_TEST_ARTIFACTS`); with
`KELPIE_UPDATE_SCREENSHOTS=1` also to docs/images/, where the README shows them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("KELPIE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("KELPIE_TEST_ARTIFACTS", REPO / "test-artifacts"))
DOCS_IMAGES = REPO / "docs" / "images"
LOCAL_HOSTS = {"127.0.0.1"}
# Headless, and nothing of Chromium's own that would reach out (updates, sync, safe browsing).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
]


@dataclass
class BrowserTab:
    """A page in a fresh browser context (its own session storage), with what it tried."""

    page: Page
    outside_requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def chromium_missing_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set KELPIE_TEST_CHROMIUM)"
    return None


# Module scope, not session: Playwright's sync API runs an event loop on the main thread while
# it is open, and the async tests of other modules need that thread's loop to themselves.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    reason = chromium_missing_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the browser tests must run)")
        pytest.skip(reason)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """One headless Chromium per test module; Playwright gives each launch a fresh, temporary
    user-data-dir, and each test its own context."""
    launched = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield launched
    launched.close()


def _guard(context: BrowserContext, tab: BrowserTab) -> None:
    def route(intercepted: Route) -> None:
        url = intercepted.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS:
            intercepted.continue_()
        else:
            tab.outside_requests.append(url)
            intercepted.abort()

    context.route("**/*", route)


def open_tab(browser: Browser) -> tuple[BrowserTab, BrowserContext]:
    """A page in a context of its own (its own session storage: another person), whose
    requests may only go to 127.0.0.1. Close the context, then `check_tab`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    opened = BrowserTab(page)
    _guard(context, opened)
    page.on("pageerror", lambda error: opened.page_errors.append(str(error)))
    page.set_default_timeout(15_000)
    return opened, context


def check_tab(opened: BrowserTab) -> None:
    assert opened.outside_requests == [], "requests left 127.0.0.1"
    assert opened.page_errors == [], "JavaScript errors on the page"


@pytest.fixture
def tab(browser: Browser) -> Iterator[BrowserTab]:
    """A guarded page, checked after the test."""
    opened, context = open_tab(browser)
    yield opened
    context.close()
    check_tab(opened)


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot as a test artifact; copied into docs/images/ when
    KELPIE_UPDATE_SCREENSHOTS=1."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("KELPIE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / f"{name}.png")
    return path
