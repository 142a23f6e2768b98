"""`/metrics`: what an operator watches, in the Prometheus text format.

Two kinds of figures, each kept where it is true for every API process:

- **From the store, at each scrape**: jobs by container group and status, claims, lease
  expiries, interruptions, failures, reallocations, blocked machines, the webhook backlog and
  the age of its oldest event. They are counted from the store's records in one statement, so
  every API process (on any host) answers the same numbers, and they survive restarts. The
  counters count records of the jobs still stored: deleting jobs (`DELETE /jobs`, a group
  purge) lowers them, which Prometheus takes as a counter reset.
- **Per process**: request latency by route template, heartbeats answered, store errors.
  `kelpie serve --workers N` (N > 1) gives its processes one `PROMETHEUS_MULTIPROC_DIR`
  (prometheus_client's multiprocess mode), so a scrape, whichever process answers it, sums
  all of them. API processes on other hosts are scraped one by one, as Prometheus does.

Set `KELPIE_METRICS_KEY` to require `Authorization: Bearer <key>` on `/metrics`.
"""

from __future__ import annotations

import hmac
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from kelpie.api.errors import ApiError, error_responses
from kelpie.schemas import JOB_STATUSES
from kelpie.store.overview import StoreMetrics
from kelpie.store.protocol import (
    AlreadyExists,
    IdempotencyConflict,
    InvalidChange,
    NotFound,
    Store,
)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Where this process's own figures live; with several processes the values also go to the
# shared multiprocess directory, from which a scrape reads them all.
_process_registry = CollectorRegistry(auto_describe=True)

REQUEST_SECONDS = Histogram(
    "kelpie_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status code. Long polls "
    "of GET /work include their wait.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=_process_registry,
)
HEARTBEATS = Counter(
    "kelpie_heartbeats",
    "Worker heartbeats this server answered with 200 (POST /jobs/{job_id}/heartbeat).",
    registry=_process_registry,
)
STORE_ERRORS = Counter(
    "kelpie_store_errors",
    "Store calls that raised an error (database unreachable, query failed), by operation.",
    ["operation"],
    registry=_process_registry,
)

HEARTBEAT_ROUTE = "/jobs/{job_id}/heartbeat"
UNROUTED = "<unrouted>"

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class RequestMetrics:
    """ASGI middleware timing every HTTP request, labelled by the route template that
    answered it (`/jobs/{job_id}`, never the raw path, so a label set stays small)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNROUTED
            _request_seconds(scope["method"], route, status).observe(time.perf_counter() - started)
            if route == HEARTBEAT_ROUTE and status == 200:
                HEARTBEATS.inc()


# The histogram of each (method, route template, status): finding it once saves every
# request prometheus_client's label checks and lock. A few dozen at most (route templates).
_request_histograms: dict[tuple[str, str, int], Histogram] = {}


def _request_seconds(method: str, route: str, status: int) -> Histogram:
    key = (method, route, status)
    histogram = _request_histograms.get(key)
    if histogram is None:
        histogram = _request_histograms[key] = REQUEST_SECONDS.labels(method, route, str(status))
    return histogram


class _ErrorCountingStore:
    """The store, with every call that fails counted in `kelpie_store_errors_total`.
    AlreadyExists, NotFound, InvalidChange and IdempotencyConflict are answers, not errors,
    and are not counted."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attribute(*args, **kwargs)
            except (AlreadyExists, NotFound, InvalidChange, IdempotencyConflict):
                raise
            except Exception:
                STORE_ERRORS.labels(name).inc()
                raise

        # Resolved once: later calls find the wrapper without passing through __getattr__.
        setattr(self, name, counted)
        return counted


def count_store_errors(store: Store) -> Store:
    """`store` with its failing calls counted (see `kelpie_store_errors_total`)."""
    return cast(Store, _ErrorCountingStore(store))


class _StoreFigures(Collector):
    """The figures read from the store for one scrape."""

    def __init__(self, snapshot: StoreMetrics, now: datetime) -> None:
        self._snapshot = snapshot
        self._now = now

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        jobs = GaugeMetricFamily(
            "kelpie_jobs",
            "Jobs in the store by container group and status.",
            labels=["container_group_id", "status"],
        )
        for group in sorted({group for group, _ in snapshot.jobs}):
            for status in JOB_STATUSES:
                jobs.add_metric([group, status], snapshot.jobs.get((group, status), 0))
        yield jobs
        attempts = snapshot.attempts
        for name, documentation, value in (
            (
                "kelpie_claims",
                "Jobs handed to a machine (attempts started).",
                sum(attempts.values()),
            ),
            (
                "kelpie_lease_expiries",
                "Attempts whose machine stopped heartbeating, so another machine took the job.",
                attempts.get("lost", 0),
            ),
            (
                "kelpie_interruptions",
                "Attempts handed back by their machine (node going away); no failure counted.",
                attempts.get("interrupted", 0),
            ),
            ("kelpie_failures", "Attempts whose command failed.", attempts.get("failed", 0)),
            (
                "kelpie_reallocations",
                "Machines handed to the fleet provider for replacement (blocked from too many "
                "jobs).",
                snapshot.reallocations,
            ),
        ):
            yield CounterMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "kelpie_blocked_machines",
            "Machines blocked from at least one job (they failed it).",
            value=snapshot.blocked_machines,
        )
        yield GaugeMetricFamily(
            "kelpie_webhook_backlog",
            "Webhook deliveries waiting: neither delivered nor given up.",
            value=snapshot.webhook_backlog,
        )
        oldest = snapshot.oldest_webhook
        yield GaugeMetricFamily(
            "kelpie_webhook_oldest_event_age_seconds",
            "Age of the oldest webhook delivery still waiting (0 when none waits).",
            value=0.0 if oldest is None else max(0.0, (self._now - oldest).total_seconds()),
        )


class _ProcessFigures(Collector):
    """This process's own figures (one API process)."""

    def collect(self) -> Iterator[Metric]:
        return iter(_process_registry.collect())


def _registry(snapshot: StoreMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessFigures())
    registry.register(_StoreFigures(snapshot, datetime.now(UTC)))
    return registry


def _check_metrics_key(request: Request) -> None:
    expected: str | None = request.app.state.kelpie.settings.metrics_key
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "missing Authorization: Bearer <KELPIE_METRICS_KEY> header")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(403, "wrong metrics key")


router = APIRouter(tags=["metrics"])

_METRICS_EXAMPLE = """\
# HELP kelpie_jobs Jobs in the store by container group and status.
# TYPE kelpie_jobs gauge
kelpie_jobs{container_group_id="97f504e8-6de6-4322-b5d5-1777a59a7ad3",status="pending"} 12.0
kelpie_jobs{container_group_id="97f504e8-6de6-4322-b5d5-1777a59a7ad3",status="running"} 4.0
# HELP kelpie_lease_expiries_total Attempts whose machine stopped heartbeating, so another \
machine took the job.
# TYPE kelpie_lease_expiries_total counter
kelpie_lease_expiries_total 3.0
"""


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    description=(
        "Jobs by group and status, claims, lease expiries, interruptions, failures, "
        "reallocations, blocked machines and the webhook backlog (read from the store at each "
        "scrape, the same from every API process); request latency by route, heartbeats "
        "answered and store errors (summed over this server's processes). Open unless the "
        "server has `KELPIE_METRICS_KEY`: then send `Authorization: Bearer <key>`."
    ),
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"example": _METRICS_EXAMPLE}}},
        **error_responses(401, 403),
    },
)
async def metrics(request: Request) -> Response:
    _check_metrics_key(request)
    store: Store = request.app.state.kelpie.store
    snapshot = await store.metrics_snapshot()
    return Response(generate_latest(_registry(snapshot)), media_type=CONTENT_TYPE_LATEST)
