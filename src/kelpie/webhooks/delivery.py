"""Delivers the webhook outbox: at least once, signed, retried with backoff for a bounded time.

The store writes an event in the same transaction as the job's state change; this loop, run
by every API process, claims due events under a lease (so two processes never deliver the
same attempt at once), POSTs them concurrently and records each outcome. A failed attempt is
retried after an exponential backoff with full jitter — `uniform(0, min(5 min, 1 s * 2^n))`
after the n-th failure — until the event is `webhook_max_age_s` old (24 h by default); one
last attempt is made at that age, then the event is given up. An API process that dies with
attempts in flight leaves them leased: another process (or its successor) retries them when
the lease ends.

The loop polls the outbox every `webhook_poll_interval_s` when idle and wakes at once when
this process changes a job (`AppState.webhooks_due`), which keeps delivery within a few
milliseconds of the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from kelpie import __version__
from kelpie.api.state import AppState
from kelpie.store.models import WebhookEvent
from kelpie.store.protocol import Store
from kelpie.webhooks.signing import signature_headers

log = logging.getLogger("kelpie.webhooks")

USER_AGENT = f"kelpie/{__version__}"
# An attempt that takes longer than this counts as failed (connect, send and answer together).
ATTEMPT_TIMEOUT_SECONDS = 10.0
# Attempts in flight at once per API process, over all receivers.
MAX_IN_FLIGHT = 32
# A claimed event is invisible to other processes this long: well above one attempt, so an
# attempt is never sent twice at once, and short enough that a crashed process's events are
# retried soon.
LEASE_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
# How long a user's webhook secret and token are used without reading them again.
CREDENTIALS_CACHE_SECONDS = 300.0


def retry_delay(failed_attempts: int) -> float:
    """Seconds before the next attempt after `failed_attempts` failures (≥ 1): exponential
    backoff with full jitter, so receivers coming back are not hit by every sender in step."""
    exponent = min(max(failed_attempts - 1, 0), 30)
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**exponent))


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def message_id(event: WebhookEvent) -> str:
    """`webhook-id`: the same for every attempt of one event, so receivers can deduplicate."""
    return f"msg_{event.id}"


class ClientLanes:
    """HTTP clients for deliveries, one per attempt in flight.

    One httpx client carrying many requests at once spends more and more time in its
    connection pool's bookkeeping (against a local receiver: 1,200 deliveries/s with 1 in
    flight, 400/s with 32), so each attempt borrows a client of its own, which keeps its
    connections alive for the next attempt to the same receiver. They share one TLS context."""

    def __init__(self, size: int) -> None:
        tls = httpx.create_ssl_context()
        self._clients = [
            httpx.AsyncClient(
                verify=tls,
                timeout=ATTEMPT_TIMEOUT_SECONDS,
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
            for _ in range(size)
        ]
        self._idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self._clients:
            self._idle.put_nowait(client)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        client = await self._idle.get()
        try:
            yield client
        finally:
            self._idle.put_nowait(client)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))


@dataclass(frozen=True)
class _Credentials:
    secret: str
    token: str
    expires: float


class WebhookSender:
    """Makes one delivery attempt of an event and records its outcome in the store."""

    def __init__(self, store: Store, lanes: ClientLanes, max_age_seconds: float) -> None:
        self._store = store
        self._lanes = lanes
        self._max_age_seconds = max_age_seconds
        self._credentials: dict[str, _Credentials] = {}

    async def deliver(self, event: WebhookEvent) -> None:
        credentials = await self._credentials_of(event.user_id)
        if credentials is None:
            await self._store.webhook_give_up(event, "the user no longer exists")
            log.warning("webhook %s dropped: user %s no longer exists", event.id, event.user_id)
            return
        error = await self._post(event, credentials)
        if error is None:
            if not await self._store.webhook_delivered(event):
                log.warning(
                    "webhook %s was delivered after its lease ran out; another process may"
                    " send it again (at-least-once)",
                    message_id(event),
                )
        else:
            await self._record_failure(event, error)

    async def _post(self, event: WebhookEvent, credentials: _Credentials) -> str | None:
        """One attempt; None when the receiver answered 2xx, else why it failed."""
        body = encode_body(event.payload)
        headers = {
            **signature_headers(credentials.secret, message_id(event), body),
            "X-Kelpie-Key": credentials.token,
            "Content-Type": "application/json",
        }
        try:
            async with self._lanes.client() as client, asyncio.timeout(ATTEMPT_TIMEOUT_SECONDS):
                response = await client.post(event.url, content=body, headers=headers)
        except TimeoutError:
            return f"no answer within {ATTEMPT_TIMEOUT_SECONDS:.0f} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"

    async def _record_failure(self, event: WebhookEvent, error: str) -> None:
        remaining = self._max_age_seconds - _age_seconds(event)
        if remaining <= 0:
            await self._store.webhook_give_up(event, error)
            log.warning(
                "webhook %s to %s given up after %d attempts: %s",
                message_id(event),
                event.url,
                event.attempts + 1,
                error,
            )
            return
        # The last attempt falls exactly at the end of the window rather than past it.
        delay = min(retry_delay(event.attempts + 1), remaining)
        await self._store.webhook_retry_later(event, delay, error)
        log.log(
            logging.INFO if event.attempts == 0 else logging.DEBUG,
            "webhook %s to %s failed (%s); attempt %d, retrying in %.1f s",
            message_id(event),
            event.url,
            error,
            event.attempts + 1,
            delay,
        )

    async def _credentials_of(self, user_id: str) -> _Credentials | None:
        now = time.monotonic()
        cached = self._credentials.get(user_id)
        if cached is not None and cached.expires > now:
            return cached
        user = await self._store.get_user(user_id)
        if user is None:
            self._credentials.pop(user_id, None)
            return None
        if len(self._credentials) > 10_000:
            self._credentials.clear()
        fresh = _Credentials(
            user.webhook_secret, user.webhook_token, now + CREDENTIALS_CACHE_SECONDS
        )
        self._credentials[user_id] = fresh
        return fresh


def _age_seconds(event: WebhookEvent) -> float:
    created = event.created if event.created.tzinfo else event.created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()


class OutboxDispatcher:
    """Keeps up to `max_in_flight` deliveries running: claims as many due events as there
    are free slots, claims again at once while the outbox has more, and otherwise sleeps until
    woken or the poll interval passes."""

    def __init__(
        self,
        store: Store,
        deliver: Callable[[WebhookEvent], Awaitable[None]],
        *,
        poll_interval: float,
        max_in_flight: int = MAX_IN_FLIGHT,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._deliver = deliver
        self._poll_interval = poll_interval
        self._max_in_flight = max_in_flight
        self._lease_seconds = lease_seconds
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                # Cleared before claiming: a change committed during the claim wakes us again.
                wake.clear()
                free = self._max_in_flight - len(self._in_flight)
                claimed = await self._claim(free) if free > 0 else 0
                if claimed == free:
                    # The outbox may hold more: claim again once half the slots are free, so
                    # a drain costs few claims and a slow receiver does not stall the others.
                    await self._until_in_flight_at_most(self._max_in_flight // 2, stop)
                else:
                    await _until_any_set((wake, stop), self._poll_interval)
        finally:
            # Unfinished attempts stay leased in the store and are retried when the lease ends.
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _claim(self, limit: int) -> int:
        events = await self._store.claim_webhook_events(limit, self._lease_seconds)
        for event in events:
            task = asyncio.create_task(self._attempt(event), name=f"webhook-{event.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(events)

    async def _attempt(self, event: WebhookEvent) -> None:
        try:
            await self._deliver(event)
        except Exception:
            # Most likely the store failed while recording the outcome: the event stays
            # leased and is attempted again when the lease ends.
            log.exception("webhook %s: recording the delivery attempt failed", message_id(event))

    async def _until_in_flight_at_most(self, count: int, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while len(self._in_flight) > count and not stop.is_set():
                await asyncio.wait({*self._in_flight, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()


async def _until_any_set(events: tuple[asyncio.Event, ...], at_most_seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=at_most_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_webhook_delivery(state: AppState, stop: asyncio.Event) -> None:
    """The API's background loop delivering every user's webhooks until `stop` is set."""
    lanes = ClientLanes(MAX_IN_FLIGHT)
    try:
        sender = WebhookSender(state.store, lanes, state.settings.webhook_max_age_s)
        dispatcher = OutboxDispatcher(
            state.store, sender.deliver, poll_interval=state.settings.webhook_poll_interval_s
        )
        await dispatcher.run(stop, state.webhooks_due)
    finally:
        await lanes.aclose()


RETENTION_CHECK_SECONDS = 3600.0


async def run_webhook_retention(state: AppState, stop: asyncio.Event) -> None:
    """Hourly, forget deliveries that ended (delivered or given up) longer ago than
    `webhook_retention_s`, so the outbox does not grow for ever. Safe in every process."""
    while not stop.is_set():
        removed = await state.store.purge_finished_webhooks(state.settings.webhook_retention_s)
        if removed:
            log.info("webhooks: forgot %d finished deliveries", removed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_CHECK_SECONDS)
