"""`/docs` and `/redoc` render every operation in a real headless Chromium whose requests to
anywhere but 127.0.0.1 are refused (and fail the test): the docs work air-gapped."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.api import Api
from tests.support.browser import BrowserTab

pytestmark = pytest.mark.parametrize("api", ["sqlite"], indirect=True)


def operation_count(api: Api) -> int:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    return sum(len(operations) for operations in spec["paths"].values())


def test_swagger_ui_renders_every_operation_offline(api: Api, tab: BrowserTab) -> None:
    page = tab.page
    page.goto(f"{api.url}/docs")

    expect(page.locator(".opblock")).to_have_count(operation_count(api))
    page.locator("#operations-jobs-submit_job .opblock-summary").click()
    expect(page.locator("#operations-jobs-submit_job")).to_contain_text("with sync")
    expect(page.locator("#operations-jobs-submit_job")).not_to_contain_text("422")


def test_redoc_renders_every_operation_offline(api: Api, tab: BrowserTab) -> None:
    page = tab.page
    page.goto(f"{api.url}/redoc")

    expect(page.locator("[data-section-id^='operation/']")).to_have_count(operation_count(api))
