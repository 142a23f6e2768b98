"""Dashboard and docs tests run in a real headless Chromium (tests/support/browser.py)."""

from tests.support.browser import browser, playwright_driver, tab

__all__ = ["browser", "playwright_driver", "tab"]
