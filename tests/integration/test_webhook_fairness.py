"""Fair webhook delivery against real receivers: a receiver that is down or never answers
cannot delay another tenant's webhook, and one that stopped answering is paused instead of
being tried again and again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kelpie.webhooks.fairness import RECEIVER_CONCURRENCY
from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.api_fixtures import BACKENDS
from tests.support.processes import ServerProcess, free_port, start_server
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import ReceiverProcess, start_receiver

BACKLOG = 160
# The other tenant's webhook must arrive within this, after the API acknowledged its change.
ARRIVAL_SECONDS = 2.0


@dataclass
class Tenant:
    user: ApiUser
    secret: str
    token: str


@dataclass
class Setup:
    server: ServerProcess
    api: Api
    tmp_path: Path
    receivers: list[ReceiverProcess]

    def tenant(self) -> Tenant:
        user = self.api.new_user()
        me = user.http.get("/users/me").json()
        return Tenant(user, me["webhook_secret"], me["webhook_token"])

    def receiver(self, tenant: Tenant, name: str, **mode: Any) -> ReceiverProcess:
        out = self.tmp_path / f"{name}.jsonl"
        receiver = start_receiver(free_port(), tenant.secret, out, token=tenant.token, **mode)
        self.receivers.append(receiver)
        return receiver


@pytest.fixture(params=BACKENDS)
def setup(
    request: pytest.FixtureRequest, fresh_database_url: Callable[[str], str], tmp_path: Path
) -> Iterator[Setup]:
    backend: str = request.param
    server = start_server(fresh_database_url(backend), new_admin_key(), tmp_path / "logs")
    started = Setup(server, Api(server, backend), tmp_path, [])
    try:
        yield started
    finally:
        for receiver in started.receivers:
            receiver.stop()
        started.api.close()
        server.stop()


def queue_running_events(tenant: Tenant, url: str, count: int) -> None:
    """`count` jobs posting to `url`, each claimed: one `running` event each."""
    group = "backlog"
    jobs = [{"command": "x", "container_group_id": group, "webhook": url}] * count
    response = tenant.user.http.post("/jobs/batch", json=jobs)
    assert response.status_code == 202, response.text
    for n in range(count):
        assert tenant.user.claim(f"m-{n}", group) is not None


def seconds_to_arrive(tenant: Tenant, receiver: ReceiverProcess) -> float:
    """One job of `tenant` claimed; from the API's acknowledgement to the receiver's read."""
    tenant.user.submit(container_group_id="healthy", webhook=receiver.url)
    assert tenant.user.claim("m-healthy", "healthy") is not None
    acknowledged = time.time()
    [record] = wait_for(receiver.accepted, "the healthy tenant's webhook", timeout=60)
    return float(record["received_at"]) - acknowledged


@pytest.mark.slow
def test_a_receiver_that_never_answers_does_not_delay_another_tenants_webhook(
    setup: Setup,
) -> None:
    stuck_tenant, other = setup.tenant(), setup.tenant()
    stuck = setup.receiver(stuck_tenant, "stuck", never_answer=True)
    healthy = setup.receiver(other, "healthy")
    queue_running_events(stuck_tenant, stuck.url, BACKLOG)
    wait_for(
        lambda: len(stuck.records()) >= RECEIVER_CONCURRENCY,
        "attempts held open by the receiver that never answers",
    )

    assert seconds_to_arrive(other, healthy) < ARRIVAL_SECONDS
    # The stuck receiver got only its share of attempts, not the whole backlog's.
    assert len(stuck.records()) <= 2 * RECEIVER_CONCURRENCY


@pytest.mark.slow
def test_a_receiver_that_stopped_answering_is_paused_not_hammered(setup: Setup) -> None:
    down_tenant, other = setup.tenant(), setup.tenant()
    down = setup.receiver(down_tenant, "down", hang_up=True)  # reads, then hangs up
    healthy = setup.receiver(other, "healthy")
    queue_running_events(down_tenant, down.url, BACKLOG)
    first = wait_for(down.records, "the first attempts to the receiver that hangs up")[0]

    assert seconds_to_arrive(other, healthy) < ARRIVAL_SECONDS
    # Watch the receiver for a while: failed attempts free their slot at once, and without a
    # pause every one of the events would be tried again within seconds, most of them
    # several times. Paused after a few failures, it sees its first wave and nothing more
    # until the pause (5 s) ends.
    time.sleep(max(0.0, float(first["received_at"]) + 3.0 - time.time()))
    attempts = down.records()
    assert len(attempts) <= 2 * RECEIVER_CONCURRENCY
    assert len(healthy.accepted()) == 1
