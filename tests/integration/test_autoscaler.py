"""Scaling rules (PROTOCOL §7) against a real `kelpie serve` driving the fake SaladCloud API
every 0.5 s: groups follow their queues within the rules' bounds, a vanished group loses its
rule, one failing group holds up no other, throttling is retried; the endpoint validates and
isolates tenants; and a machine blocked from 5 jobs is reallocated exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.api_fixtures import BACKENDS
from tests.support.fake_salad import FakeSalad, RecordedRequest, Reply, problem
from tests.support.processes import ServerProcess, start_server
from tests.support.waiting import wait_for

ORG, PROJECT = "acme", "render-farm"
INTERVAL = 0.5
# Several evaluation rounds, plus the provider's retries of a 429 or 5xx.
SCALE_DEADLINE = 15.0


class FlakySalad(FakeSalad):
    """FakeSalad that can answer 500 to every call about chosen groups, forever, and 404 to
    every start of chosen groups (which still exist)."""

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self.broken_names: set[str] = set()
        self.unstartable_names: set[str] = set()

    def handle(self, request: RecordedRequest) -> Reply:
        with self.lock:
            broken = any(f"/containers/{name}" in request.path for name in self.broken_names)
            unstartable = any(
                request.path.endswith(f"/containers/{name}/start")
                for name in self.unstartable_names
            )
        if broken:
            return problem(500, "Internal Server Error", "this group is having a bad day")
        if unstartable:
            return problem(404, "Not Found", "no capacity for this group just now")
        return super().handle(request)


@dataclass
class Fleet:
    """A server whose fleet provider is the fake SaladCloud, and a user acting in ORG/PROJECT."""

    api: Api
    salad: FlakySalad
    user: ApiUser

    def new_group(self, status: str = "stopped", replicas: int = 0) -> str:
        group_id = str(uuid.uuid4())
        self.salad.add_group(ORG, PROJECT, group_id, f"g-{group_id[:8]}", status, replicas)
        return group_id

    def add_rule(self, group_id: str, low: int, high: int, idle: int = 0) -> None:
        response = self.user.http.post(
            "/scaling-rules",
            json={
                "container_group_id": group_id,
                "min_replicas": low,
                "max_replicas": high,
                "idle_threshold_seconds": idle,
            },
        )
        assert response.status_code == 201, response.text

    def is_at(self, group_id: str, status: str, replicas: int | None = None) -> bool:
        group = self.salad.group(group_id)
        return group.status == status and (replicas is None or group.replicas == replicas)


@pytest.fixture(scope="module", params=BACKENDS)
def fleet_server(
    request: pytest.FixtureRequest,
    fresh_database_url: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Api, FlakySalad]]:
    salad = FlakySalad(api_key="salad-key").start()
    server: ServerProcess | None = None
    api: Api | None = None
    try:
        server = start_server(
            fresh_database_url(request.param),
            new_admin_key(),
            tmp_path_factory.mktemp("fleet") / "logs",
            extra_env={
                "SALAD_API_KEY": "salad-key",
                "KELPIE_SALAD_API_URL": salad.url,
                "KELPIE_AUTOSCALE_INTERVAL_S": str(INTERVAL),
            },
        )
        api = Api(server, request.param)
        yield api, salad
    finally:
        if api is not None:
            api.close()
        if server is not None:
            server.stop()
        salad.stop()


@pytest.fixture
def fleet(fleet_server: tuple[Api, FlakySalad]) -> Fleet:
    """A clean slate: no rules left from other tests, no faults, a fresh user."""
    api, salad = fleet_server
    assert api.admin().http.delete("/scaling-rules").status_code == 204
    salad.broken_names.clear()
    salad.unstartable_names.clear()
    return Fleet(api, salad, api.new_user(ORG, PROJECT))


def test_empty_queue_stops_a_running_group(fleet: Fleet) -> None:
    group = fleet.new_group(status="running", replicas=3)

    fleet.add_rule(group, 0, 10)

    wait_for(lambda: fleet.is_at(group, "stopped"), "the group to stop", timeout=SCALE_DEADLINE)


def test_jobs_start_the_group_with_replicas_clamped_to_the_rule(fleet: Fleet) -> None:
    group = fleet.new_group(status="stopped", replicas=0)
    fleet.add_rule(group, 1, 3)
    wait_for(
        lambda: fleet.is_at(group, "running", 1), "min replicas, running", timeout=SCALE_DEADLINE
    )

    for _ in range(2):
        fleet.user.submit(container_group_id=group)
    wait_for(
        lambda: fleet.is_at(group, "running", 2), "2 replicas for 2 jobs", timeout=SCALE_DEADLINE
    )

    for _ in range(5):
        fleet.user.submit(container_group_id=group)
    wait_for(lambda: fleet.is_at(group, "running", 3), "max replicas", timeout=SCALE_DEADLINE)


def test_a_stopped_group_is_sized_before_it_starts(fleet: Fleet) -> None:
    group = fleet.new_group(status="stopped", replicas=9)
    fleet.add_rule(group, 0, 10)
    fleet.user.submit(container_group_id=group)

    wait_for(lambda: fleet.is_at(group, "running", 1), "1 replica, running", timeout=SCALE_DEADLINE)

    changes = [r for r in fleet.salad.requests if r.method != "GET" and group[:8] in r.path]
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in changes][:2] == [
        ("PATCH", f"g-{group[:8]}"),
        ("POST", "start"),
    ]


def test_idle_threshold_keeps_the_group_up_after_the_last_job(fleet: Fleet) -> None:
    idle = 4
    group = fleet.new_group(status="stopped", replicas=0)
    fleet.add_rule(group, 0, 5, idle=idle)
    job = fleet.user.submit(container_group_id=group)
    wait_for(lambda: fleet.is_at(group, "running", 1), "the group to start", timeout=SCALE_DEADLINE)

    assert fleet.user.claim("m-1", group)["id"] == job["id"]  # type: ignore[index]
    assert fleet.user.report(job["id"], "completed", "m-1", group).status_code == 200
    ended = time.monotonic()
    wait_for(
        lambda: fleet.is_at(group, "stopped"), "the group to stop", timeout=idle + SCALE_DEADLINE
    )

    # Up for the threshold (less a second of clock granularity), then down within a few rounds.
    assert time.monotonic() - ended >= idle - 1


def test_group_unknown_to_the_provider_loses_its_rule(fleet: Fleet) -> None:
    group = fleet.new_group()
    fleet.add_rule(group, 0, 3)

    fleet.salad.remove_group(group)

    wait_for(
        lambda: fleet.user.http.get(f"/scaling-rules/{group}").status_code == 404,
        "the rule to be deleted",
        timeout=SCALE_DEADLINE,
    )


def test_a_404_on_start_of_a_group_that_exists_keeps_its_rule(fleet: Fleet) -> None:
    group = fleet.new_group(status="stopped")
    name = f"g-{group[:8]}"
    fleet.salad.unstartable_names.add(name)
    fleet.add_rule(group, 0, 3)
    fleet.user.submit(container_group_id=group)

    wait_for(
        lambda: len(fleet.salad.requests_to(f"/{name}/start", "POST")) >= 2,
        "two rounds of refused starts",
        timeout=SCALE_DEADLINE,
    )
    assert fleet.user.http.get(f"/scaling-rules/{group}").status_code == 200

    fleet.salad.unstartable_names.clear()
    wait_for(lambda: fleet.is_at(group, "running", 1), "the group to start", timeout=SCALE_DEADLINE)


def test_one_failing_group_does_not_block_the_others(fleet: Fleet) -> None:
    broken = fleet.new_group(status="stopped")
    fleet.add_rule(broken, 0, 3)
    fleet.salad.broken_names.add(f"g-{broken[:8]}")
    fleet.user.submit(container_group_id=broken)
    healthy = fleet.new_group(status="stopped")
    fleet.add_rule(healthy, 0, 3)
    # Requests for the broken group come first and keep failing, retried by the provider.
    wait_for(
        lambda: len(fleet.salad.requests_to(f"/g-{broken[:8]}")) >= 2,
        "the broken group to be tried",
        timeout=SCALE_DEADLINE,
    )

    fleet.user.submit(container_group_id=healthy)

    wait_for(lambda: fleet.is_at(healthy, "running", 1), "the healthy group to start", timeout=3.0)
    assert fleet.is_at(broken, "stopped")
    assert fleet.user.http.get(f"/scaling-rules/{broken}").status_code == 200


def test_throttled_provider_calls_are_retried(fleet: Fleet) -> None:
    group = fleet.new_group(status="stopped")
    fleet.add_rule(group, 0, 3)
    before = len(fleet.salad.requests)

    fleet.salad.fail_next(3, 429, retry_after=0)
    fleet.user.submit(container_group_id=group)

    wait_for(lambda: fleet.is_at(group, "running", 1), "the group to start", timeout=SCALE_DEADLINE)
    assert len(fleet.salad.requests) - before >= 3 + 3  # three throttled, then GET/PATCH/start
    assert "429" in fleet.api.server.log()


# -- the endpoint ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"min_replicas": -1, "max_replicas": 3, "idle_threshold_seconds": 0}, "min_replicas"),
        ({"min_replicas": 0, "max_replicas": 501, "idle_threshold_seconds": 0}, "max_replicas"),
        ({"min_replicas": 0, "max_replicas": 3, "idle_threshold_seconds": 3601}, "idle"),
        ({"min_replicas": 0, "max_replicas": 3, "idle_threshold_seconds": -1}, "idle"),
        ({"min_replicas": 4, "max_replicas": 3, "idle_threshold_seconds": 0}, "min_replicas"),
        ({"min_replicas": "many", "max_replicas": 3, "idle_threshold_seconds": 0}, "min_replicas"),
        ({"min_replicas": 0, "max_replicas": 3}, "idle_threshold_seconds"),
    ],
)
def test_bad_rule_is_rejected_with_a_message(
    fleet: Fleet, body: dict[str, Any], field: str
) -> None:
    group = fleet.new_group()

    response = fleet.user.http.post("/scaling-rules", json={"container_group_id": group, **body})

    assert response.status_code == 400, response.text
    assert field in response.json()["message"]
    assert fleet.user.http.get(f"/scaling-rules/{group}").status_code == 404


def test_rule_for_a_group_the_provider_does_not_know_is_rejected(fleet: Fleet) -> None:
    response = fleet.user.http.post(
        "/scaling-rules",
        json={
            "container_group_id": str(uuid.uuid4()),
            "min_replicas": 0,
            "max_replicas": 3,
            "idle_threshold_seconds": 0,
        },
    )

    assert response.status_code == 400, response.text
    assert "container_group_id" in response.json()["message"]


def test_key_without_a_salad_project_is_told_so(fleet: Fleet) -> None:
    unplaced = fleet.api.new_user()  # a key created without org_name/project_name
    rule = {
        "container_group_id": fleet.new_group(),
        "min_replicas": 0,
        "max_replicas": 3,
        "idle_threshold_seconds": 0,
    }

    response = unplaced.http.post("/scaling-rules", json=rule)

    assert response.status_code == 400
    assert "organization and project" in response.json()["message"]
    assert unplaced.http.get("/scaling-rules").json()["_count"] == 0


def test_patch_making_min_above_max_is_rejected(fleet: Fleet) -> None:
    group = fleet.new_group()
    fleet.add_rule(group, 0, 3)

    response = fleet.user.http.patch(f"/scaling-rules/{group}", json={"min_replicas": 4})

    assert response.status_code == 400, response.text
    assert "min_replicas" in response.json()["message"]
    assert fleet.user.http.get(f"/scaling-rules/{group}").json()["min_replicas"] == 0


def test_other_users_rule_is_not_found_and_unchanged(fleet: Fleet) -> None:
    group = fleet.new_group()
    fleet.add_rule(group, 0, 3)
    other = fleet.api.new_user(ORG, PROJECT).http

    assert other.get(f"/scaling-rules/{group}").status_code == 404
    assert other.patch(f"/scaling-rules/{group}", json={"max_replicas": 9}).status_code == 404
    # Exactly as for a rule that does not exist (deleting one is a no-op, for retries).
    missing = other.delete(f"/scaling-rules/{uuid.uuid4()}").status_code
    assert other.delete(f"/scaling-rules/{group}").status_code == missing
    listed = other.get("/scaling-rules").json()["rules"]
    assert group not in {rule["container_group_id"] for rule in listed}
    mine = fleet.user.http.get(f"/scaling-rules/{group}")
    assert mine.status_code == 200
    assert mine.json()["max_replicas"] == 3


# -- blocked machines --------------------------------------------------------------------------


def fail_jobs_on(user: ApiUser, machine: str, group: str, count: int) -> None:
    """`count` jobs, each claimed by `machine` and reported failed by it once."""
    for _ in range(count):
        user.submit(container_group_id=group, max_failures=3)
    for _ in range(count):
        job = user.claim(machine, group)
        assert job is not None
        response = user.report(job["id"], "failed", machine, group, exit_code=1, error="bad GPU")
        assert response.status_code == 202, response.text


def reallocations(salad: FakeSalad, group: str) -> list[str]:
    return salad.group(group).reallocated_machines


def test_machine_blocked_from_five_jobs_is_reallocated_exactly_once(fleet: Fleet) -> None:
    group = fleet.new_group(status="running", replicas=2)

    fail_jobs_on(fleet.user, "bad-1", group, 6)
    wait_for(lambda: "bad-1" in reallocations(fleet.salad, group), "bad-1 reallocated", timeout=10)
    # A later machine's reallocation, requested after bad-1's sixth failure, comes through
    # after anything that sixth failure could have triggered.
    fail_jobs_on(fleet.user, "bad-2", group, 5)
    wait_for(lambda: "bad-2" in reallocations(fleet.salad, group), "bad-2 reallocated", timeout=10)

    assert reallocations(fleet.salad, group).count("bad-1") == 1
    assert len(fleet.salad.requests_to("/instances/bad-1/reallocate", "POST")) == 1


def test_failures_under_another_tenants_machine_id_spend_only_their_own_reallocation(
    fleet: Fleet,
) -> None:
    group = fleet.new_group(status="running", replicas=2)
    theirs = str(uuid.uuid4())
    fleet.salad.add_group("evil-org", "evil-project", theirs, f"g-{theirs[:8]}", "running", 1)
    mallory = fleet.api.new_user("evil-org", "evil-project")

    # Mallory reports five failures under the id of a machine of another tenant ...
    fail_jobs_on(mallory, "victim-1", theirs, 5)
    wait_for(lambda: "victim-1" in reallocations(fleet.salad, theirs), "mallory's reallocation")
    # ... which leaves that tenant's own reallocation of the machine untouched.
    fail_jobs_on(fleet.user, "victim-1", group, 5)

    wait_for(lambda: "victim-1" in reallocations(fleet.salad, group), "the owner's reallocation")
    assert reallocations(fleet.salad, group).count("victim-1") == 1


def test_webhook_that_is_not_http_is_rejected(fleet: Fleet) -> None:
    response = fleet.user.http.post(
        "/jobs",
        json={"command": "x", "container_group_id": "g", "webhook": "file:///etc/passwd"},
    )

    assert response.status_code == 400
    assert "webhook" in response.json()["message"]


# -- one evaluator -----------------------------------------------------------------------------


def test_exactly_one_of_two_api_processes_scales_and_the_other_takes_over(
    fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    database = fresh_database_url("postgres")
    group_id = str(uuid.uuid4())
    # Each process talks to its own fake SaladCloud holding the same group, so every call
    # tells which process made it.
    fakes = [FlakySalad("salad-key").start() for _ in range(2)]
    admin_key = new_admin_key()  # one for both, as for every process of one deployment
    servers: list[ServerProcess] = []
    apis: list[Api] = []
    try:
        for fake in fakes:
            fake.add_group(ORG, PROJECT, group_id, "shared", status="running", replicas=1)
            env = {
                "SALAD_API_KEY": "salad-key",
                "KELPIE_SALAD_API_URL": fake.url,
                "KELPIE_AUTOSCALE_INTERVAL_S": str(INTERVAL),
            }
            servers.append(start_server(database, admin_key, tmp_path / "logs", extra_env=env))
            apis.append(Api(servers[-1], "postgres"))
        user = apis[0].new_user(ORG, PROJECT)
        fleet = Fleet(apis[0], fakes[0], user)
        fleet.add_rule(group_id, 1, 1)
        for fake in fakes:
            fake.clear_requests()

        def calls(n: int) -> int:
            return len(fakes[n].requests_to("/containers/shared", "GET"))

        wait_for(lambda: calls(0) + calls(1) >= 6, "six evaluations", timeout=SCALE_DEADLINE)
        leader = 0 if calls(0) else 1
        assert calls(1 - leader) == 0, "both processes evaluated the rules"

        servers[leader].kill()
        wait_for(
            lambda: calls(1 - leader) >= 2, "the other process to take over", timeout=SCALE_DEADLINE
        )
    finally:
        for api in apis:
            api.close()
        for server in servers:
            server.stop()
        for fake in fakes:
            fake.stop()
