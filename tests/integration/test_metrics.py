"""`/metrics` of a real `kelpie serve --workers 2`, parsed with Prometheus' own parser after a
scripted run: the figures equal the store's counts (read back through the API) whichever
process answers the scrape, request latency is labelled by route template, and a metrics key,
when set, is required."""

from __future__ import annotations

import re
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kelpie.schemas import JOB_STATUSES
from tests.support.api import Api, ApiUser
from tests.support.api_fixtures import BACKENDS
from tests.support.processes import ServerProcess, start_server
from tests.support.waiting import wait_for

METRICS_KEY = "metrics-" + secrets.token_hex(8)
UUID_IN_PATH = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module", params=BACKENDS)
def two_process_api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fresh_database_url: Callable[[str], str],
) -> Iterator[Api]:
    """`kelpie serve --workers 2` on a database of its own, with a metrics key."""
    directory = tmp_path_factory.mktemp(f"metrics-{request.param}")
    server: ServerProcess = start_server(
        fresh_database_url(request.param),
        f"admin-{secrets.token_hex(16)}",
        directory / "logs",
        workers=2,
        extra_env={
            "KELPIE_METRICS_KEY": METRICS_KEY,
            "KELPIE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            "KELPIE_WEBHOOK_POLL_INTERVAL_S": "3600",
        },
    )
    api = Api(server, request.param)
    try:
        yield api
    finally:
        api.close()
        server.stop()


def scrape(url: str, key: str | None = METRICS_KEY) -> httpx.Response:
    """One scrape on a new connection, so that either process may answer it."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        return client.get("/metrics")


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def run_script(user: ApiUser, groups: list[str]) -> Counter[str]:
    """Claims, heartbeats, completions, failures, a hand-back, a cancel and a lease that runs
    out, spread over two groups; returns how many requests of each route template it made."""
    made: Counter[str] = Counter()
    g1, g2 = groups
    hook = {"webhook": "http://127.0.0.1:9/kelpie-hook"}  # nobody listens: stays in backlog
    for _ in range(4):
        user.submit(container_group_id=g1, max_failures=1, **hook)
    user.submit(container_group_id=g2, heartbeat_interval=1, max_failures=2)
    made["POST /jobs"] += 5

    def claim(machine: str, group: str) -> dict[str, Any]:
        job = user.claim(machine, group)
        made["GET /work"] += 1
        assert job is not None
        return job

    def report(job: dict[str, Any], what: str, machine: str, group: str, **extra: Any) -> None:
        response = user.report(job["id"], what, machine, group, **extra)
        made[f"POST /jobs/{{job_id}}/{what}"] += 1
        assert response.status_code in (200, 202), response.text

    done = claim("m1", g1)
    for _ in range(3):
        report(done, "heartbeat", "m1", g1, attempt_id=done["attempt_id"])
    report(done, "completed", "m1", g1, attempt_id=done["attempt_id"])
    broken = claim("m2", g1)
    report(broken, "failed", "m2", g1, exit_code=1)  # max_failures 1: failed for good
    leaving = claim("m3", g1)
    report(leaving, "heartbeat", "m3", g1)
    report(leaving, "interrupted", "m3", g1)
    retried = claim("m4", g2)
    report(retried, "failed", "m4", g2, exit_code=2)  # max_failures 2: pending again
    stalled = claim("m5", g2)  # the same job, which m5 then leaves without a heartbeat
    taken = wait_for(lambda: user.claim("m6", g2, wait=5), "m6 takes over the stalled job")
    made["GET /work"] += 1  # the successful one; the empty polls are counted below
    assert taken["id"] == stalled["id"]
    canceled = user.http.delete(f"/jobs/{taken['id']}")
    assert canceled.status_code == 202
    made["DELETE /jobs/{job_id}"] += 1
    for _ in range(5):
        assert user.http.get(f"/jobs/{done['id']}").status_code == 200
    made["GET /jobs/{job_id}"] += 5
    return made


def store_counts(admin: ApiUser, groups: list[str]) -> dict[str, Any]:
    """What the store holds, read back through the API."""
    jobs: dict[tuple[str, str], int] = {}
    outcomes: Counter[str] = Counter()
    heartbeats = 0
    for group in groups:
        for status in JOB_STATUSES:
            listed = admin.http.get(
                "/jobs", params={"container_group_id": group, "status": status, "page_size": 1000}
            ).json()["jobs"]
            jobs[(group, status)] = len(listed)
            for job in listed:
                heartbeats += job["num_heartbeats"]
                attempts = admin.http.get(f"/jobs/{job['id']}/attempts").json()
                outcomes.update(attempt["outcome"] for attempt in attempts)
    return {"jobs": jobs, "outcomes": outcomes, "heartbeats": heartbeats}


def test_metrics_equal_the_stores_counts_from_every_process(two_process_api: Api) -> None:
    api = two_process_api
    user, admin = api.new_user(), api.admin()
    groups = [f"group-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    made = run_script(user, groups)
    expected = store_counts(admin, groups)

    scrapes = [samples(scrape(api.url).text) for _ in range(8)]

    store_figures = [
        {key: v for key, v in found.items() if not key[0].startswith("kelpie_http_")}
        for found in scrapes
    ]
    for found in store_figures[1:]:
        for key in ("kelpie_jobs", "kelpie_claims_total", "kelpie_lease_expiries_total"):
            assert {k: v for k, v in found.items() if k[0] == key} == {
                k: v for k, v in store_figures[0].items() if k[0] == key
            }
    found = scrapes[-1]
    for (group, status), count in expected["jobs"].items():
        assert value(found, "kelpie_jobs", container_group_id=group, status=status) == count
    outcomes = expected["outcomes"]
    assert value(found, "kelpie_claims_total") == sum(outcomes.values()) == 5 + 1
    assert value(found, "kelpie_lease_expiries_total") == outcomes["lost"] == 1
    assert value(found, "kelpie_interruptions_total") == outcomes["interrupted"] == 1
    assert value(found, "kelpie_failures_total") == outcomes["failed"] == 2
    assert value(found, "kelpie_blocked_machines") == 2  # m2 and m4 failed a job each
    assert value(found, "kelpie_heartbeats_total") == expected["heartbeats"] == 4
    # each g1 job claimed sends `running`, and the completed and failed ones one more each
    assert value(found, "kelpie_webhook_backlog") == 3 + 2
    assert value(found, "kelpie_webhook_oldest_event_age_seconds") > 0
    # Latency by route template, summed over both processes: every request the script made.
    for route, count in made.items():
        method, path = route.split(" ")
        answered = sum(
            v
            for (name, labels), v in found.items()
            if name == "kelpie_http_request_duration_seconds_count"
            and ("method", method) in labels
            and ("route", path) in labels
        )
        if route == "GET /work":
            assert answered >= count, "empty polls while the lease ran out come on top"
        else:
            assert answered == count, route
    routes = {dict(labels)["route"] for name, labels in found if name.startswith("kelpie_http_")}
    assert not [route for route in routes if UUID_IN_PATH.search(route)], "raw paths as labels"


def test_metrics_need_the_metrics_key_when_one_is_set(two_process_api: Api) -> None:
    assert scrape(two_process_api.url, key=None).status_code == 401
    refused = scrape(two_process_api.url, key="wrong")
    assert refused.status_code == 403
    assert refused.json()["error"] == "Forbidden"
    assert scrape(two_process_api.url).status_code == 200


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_metrics_are_open_without_a_metrics_key(api: Api) -> None:
    answer = scrape(api.url, key=None)
    assert answer.status_code == 200
    assert "kelpie_jobs" in {family.name for family in text_string_to_metric_families(answer.text)}
