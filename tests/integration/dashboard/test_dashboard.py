"""The dashboard at /ui, used as a person would, in a real headless Chromium: sign in with a
key, list and filter jobs, follow a job that changed machines, cancel one, look at a group;
and one user's jobs stay out of another's sight. No request leaves 127.0.0.1 (the `tab`
fixture fails the test otherwise)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.api import Api, ApiUser
from tests.support.browser import BrowserTab, check_tab, open_tab, save_screenshot
from tests.support.waiting import wait_for

# The pages read everything through the public API, whose two backends the API suites cover.
pytestmark = pytest.mark.parametrize("api", ["sqlite"], indirect=True)


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/ui/")
    page.fill("#api-key", key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#username")


def listed_job_ids(page: Page) -> list[str]:
    page.wait_for_selector("table.jobs, #no-jobs")
    return [
        row.get_attribute("data-job-id") or "" for row in page.query_selector_all("tr[data-job-id]")
    ]


def take_over(user: ApiUser, group: str) -> dict[str, Any]:
    """A job claimed by machine-a, whose lease then runs out (heartbeat_interval 1, no
    heartbeat), and which machine-b takes over."""
    job = user.submit(container_group_id=group, heartbeat_interval=1)
    first = user.claim("machine-a", group)
    assert first is not None and first["id"] == job["id"]
    taken = wait_for(lambda: user.claim("machine-b", group, wait=5), "machine-b takes over")
    assert taken["id"] == job["id"]
    return taken


def test_sign_in_lists_own_jobs_and_keeps_the_key_in_session_storage_only(
    api: Api, user: ApiUser, group: str, tab: BrowserTab
) -> None:
    jobs = [user.submit(container_group_id=group) for _ in range(3)]
    page = tab.page

    sign_in(page, api.url, user.key)

    assert listed_job_ids(page) == [job["id"] for job in reversed(jobs)], "newest first"
    assert page.evaluate("sessionStorage.getItem('kelpie.apiKey')") == user.key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert user.key not in page.url

    page.click("#signout")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.getItem('kelpie.apiKey')") is None


def test_a_wrong_key_is_refused_at_sign_in(api: Api, tab: BrowserTab) -> None:
    page = tab.page
    page.goto(f"{api.url}/ui/")
    page.fill("#api-key", "kelpie_not-a-key")
    page.click("#signin button[type=submit]")

    expect(page.locator("#signin-error")).to_contain_text("unknown or revoked")
    assert page.evaluate("sessionStorage.getItem('kelpie.apiKey')") is None


def test_filters_by_status_and_group_and_pages_through(
    api: Api, user: ApiUser, group: str, tab: BrowserTab
) -> None:
    other_group = f"{group}-other"
    queued = [user.submit(container_group_id=group) for _ in range(3)]
    elsewhere = user.submit(container_group_id=other_group)
    running = user.claim("machine-a", group)
    assert running is not None
    page = tab.page
    sign_in(page, api.url, user.key)

    page.select_option("#filter-status", "running")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r"status=running"))
    assert listed_job_ids(page) == [running["id"]]

    page.goto(f"{api.url}/ui/")
    page.fill("#filter-group", other_group)
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r"group="))
    assert listed_job_ids(page) == [elsewhere["id"]]

    page.goto(f"{api.url}/ui/?group={group}&page_size=25")
    assert sorted(listed_job_ids(page)) == sorted(job["id"] for job in queued)
    page.goto(f"{api.url}/ui/?group={group}&page_size=2")
    first_page = listed_job_ids(page)
    page.click("#next")
    page.wait_for_url(re.compile(r"page=2"))
    second_page = listed_job_ids(page)
    assert len(first_page) == 2 and len(second_page) == 1
    assert sorted(first_page + second_page) == sorted(job["id"] for job in queued)


def test_job_page_shows_the_takeover_on_the_attempts_timeline(
    api: Api, user: ApiUser, group: str, tab: BrowserTab
) -> None:
    job = take_over(user, group)
    committed = user.http.post(
        f"/jobs/{job['id']}/checkpoints",
        json={
            "machine_id": "machine-b",
            "container_group_id": group,
            "attempt_id": job["attempt_id"],
            "generation": 1,
            "files": [],
        },
    )
    assert committed.status_code == 201, committed.text
    page = tab.page
    sign_in(page, api.url, user.key)

    page.click(f"a[href$='/ui/jobs/{job['id']}']")
    page.wait_for_selector("#timeline")

    bars = page.locator("#timeline g.attempt")
    expect(bars).to_have_count(2)
    assert bars.nth(0).get_attribute("data-machine") == "machine-a"
    assert bars.nth(0).get_attribute("data-outcome") == "lost"
    assert bars.nth(1).get_attribute("data-machine") == "machine-b"
    assert bars.nth(1).get_attribute("data-outcome") == "running"
    expect(page.locator("table.attempts tbody tr")).to_have_count(2)
    kinds = page.locator("table.events tr[data-kind]").evaluate_all(
        "rows => rows.map(row => row.dataset.kind)"
    )
    assert kinds == ["claimed", "lost", "claimed", "checkpoint_committed"]
    expect(page.locator("table.checkpoints tbody tr")).to_have_count(1)
    expect(page.locator("#field-machine")).to_contain_text("machine-b")
    save_screenshot(page, "dashboard-job")


def test_cancel_from_the_job_page_asks_before_it_cancels(
    api: Api, user: ApiUser, group: str, tab: BrowserTab
) -> None:
    job = user.submit(container_group_id=group)
    page = tab.page
    sign_in(page, api.url, user.key)
    page.goto(f"{api.url}/ui/jobs/{job['id']}")

    page.click("#cancel-job")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-no")
    expect(page.locator("#confirm")).to_be_hidden()
    assert user.job(job["id"])["status"] == "pending"

    page.click("#cancel-job")
    page.click("#confirm-yes")
    expect(page.locator("h1 .badge")).to_have_text("canceled")
    assert user.job(job["id"])["status"] == "canceled"
    expect(page.locator("#cancel-job")).to_have_count(0)


def test_a_users_jobs_are_hidden_from_another_user_but_not_from_an_admin(
    api: Api, group: str, browser: Browser
) -> None:
    alice, bob = api.new_user(), api.new_user()
    alices = alice.submit(container_group_id=group)
    bobs = bob.submit(container_group_id=group)
    tabs = []
    for key in (bob.key, api.server.admin_key):
        opened, context = open_tab(browser)
        tabs.append((opened, context, key))
    try:
        bob_tab, _, _ = tabs[0]
        sign_in(bob_tab.page, api.url, bob.key)
        assert listed_job_ids(bob_tab.page) == [bobs["id"]]
        bob_tab.page.goto(f"{api.url}/ui/jobs/{alices['id']}")
        expect(bob_tab.page.locator("h1")).to_have_text("Job not found")
        bob_tab.page.goto(f"{api.url}/ui/groups/{group}")
        expect(bob_tab.page.locator("[data-count=pending] .n")).to_have_text("1")

        admin_tab, _, _ = tabs[1]
        sign_in(admin_tab.page, api.url, api.server.admin_key)
        admin_tab.page.goto(f"{api.url}/ui/?group={group}")
        assert sorted(listed_job_ids(admin_tab.page)) == sorted([alices["id"], bobs["id"]])
        expect(admin_tab.page.locator(".who .badge.admin")).to_be_visible()
        admin_tab.page.goto(f"{api.url}/ui/groups/{group}")
        expect(admin_tab.page.locator("[data-count=pending] .n")).to_have_text("2")
    finally:
        for opened, context, _ in tabs:
            context.close()
            check_tab(opened)


def test_group_page_shows_counts_activity_workers_and_blocked_machines(
    api: Api, user: ApiUser, group: str, tab: BrowserTab
) -> None:
    for _ in range(6):
        user.submit(container_group_id=group, max_failures=2)
    done = user.claim("machine-a", group)
    failed = user.claim("machine-b", group)
    handed_back = user.claim("machine-c", group)
    held = user.claim("machine-d", group)
    assert done and failed and handed_back and held
    assert user.report(done["id"], "completed", "machine-a", group).status_code == 200
    assert user.report(failed["id"], "failed", "machine-b", group, exit_code=2).status_code == 202
    assert user.report(handed_back["id"], "interrupted", "machine-c", group).status_code == 202
    counts = {
        status: len(
            user.http.get("/jobs", params={"container_group_id": group, "status": status}).json()[
                "jobs"
            ]
        )
        for status in ("pending", "running", "completed")
    }
    page = tab.page
    sign_in(page, api.url, user.key)

    page.goto(f"{api.url}/ui/groups")
    page.click(f"tr[data-group='{group}'] a")
    page.wait_for_selector("#activity-chart")

    expect(page.locator("[data-count=pending] .n")).to_have_text(str(counts["pending"]))
    expect(page.locator("[data-count=running] .n")).to_have_text(str(counts["running"]))
    expect(page.locator("[data-count=ended] .n")).to_have_text(str(counts["completed"]))
    expect(page.locator("#interruptions-total")).to_have_text("1")
    # every machine that asked for the group's work, the one holding a job with it
    expect(page.locator("table.workers tbody tr")).to_have_count(4)
    expect(page.locator("table.workers")).to_contain_text(held["id"])
    expect(page.locator("table.blocked tbody tr")).to_have_count(1)
    expect(page.locator("table.blocked")).to_contain_text("machine-b")
    page.goto(f"{api.url}/ui/groups/{group}?window=1h")
    page.wait_for_selector("#activity-chart")
    save_screenshot(page, "dashboard-group")
