"""Delivers the webhook outbox: at least once, signed, retried with backoff for a bounded time.

The store writes an event in the same transaction as the job's state change; this loop, run
by every API process, claims due events under a lease (so two processes never deliver the
same attempt at once), POSTs them concurrently and records each outcome. A failed attempt is
retried after an exponential backoff with full jitter — `uniform(0, min(5 min, 1 s * 2^n))`
after the n-th failure — until the event is `webhook_max_age_s` old (24 h by default); one
last attempt is made at that age, then the event is given up. An API process that dies with
attempts in flight leaves them leased: another process (or its successor) retries them when
the lease ends.

Deliveries are fair between receivers (`kelpie.webhooks.fairness`): claims take a share of
every receiver's due events, each receiver has a few attempts in flight at most, and one that
stopped answering is paused rather than tried. They only reach addresses the operator allows
(`kelpie.webhooks.targets`, `kelpie.webhooks.connect`): a target that is or resolves to a
refused address makes its event dead at once. At most `MAX_ANSWER_BYTES` of an answer are
read. Logs show webhook URLs without credentials or query string.

The loop polls the outbox every `webhook_poll_interval_s` when idle and wakes at once when
this process changes a job (the API sets the `wake` event it hands the loop), which keeps
delivery within a few milliseconds of the change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpcore
import httpx

from kelpie import __version__
from kelpie.backoff import Backoff
from kelpie.store.models import WebhookEvent
from kelpie.store.protocol import Store
from kelpie.webhooks.connect import GuardedNetworkBackend
from kelpie.webhooks.fairness import Outcome, ReceiverGate
from kelpie.webhooks.signing import signature_headers
from kelpie.webhooks.targets import (
    AddressPolicy,
    RefusedTarget,
    redact,
    webhook_url_problem,
)

log = logging.getLogger("kelpie.webhooks")

USER_AGENT = f"kelpie/{__version__}"
# An attempt that takes longer than this counts as failed (connect, send and answer together).
ATTEMPT_TIMEOUT_SECONDS = 10.0
# Attempts in flight at once per API process, over all receivers (each receiver has at most
# `fairness.RECEIVER_CONCURRENCY` of them).
MAX_IN_FLIGHT = 64
# A claimed event is invisible to other processes this long: well above one attempt, so an
# attempt is never sent twice at once, and short enough that a crashed process's events are
# retried soon.
LEASE_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
# How long a user's webhook secret and token are used without reading them again.
CREDENTIALS_CACHE_SECONDS = 300.0
# Only the status matters; a receiver's answer body is read up to this much (so a short one
# leaves the connection reusable) and the connection dropped if there is more.
MAX_ANSWER_BYTES = 4096
_TIMEOUTS = {
    "connect": ATTEMPT_TIMEOUT_SECONDS,
    "read": ATTEMPT_TIMEOUT_SECONDS,
    "write": ATTEMPT_TIMEOUT_SECONDS,
    "pool": ATTEMPT_TIMEOUT_SECONDS,
}
# Failures that mean the receiver did not answer (as opposed to answering an error).
_NO_ANSWER = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    OSError,
)


def retry_delay(failed_attempts: int) -> float:
    """Seconds before the next attempt after `failed_attempts` failures (≥ 1): exponential
    backoff with full jitter, so receivers coming back are not hit by every sender in step."""
    exponent = min(max(failed_attempts - 1, 0), 30)
    return Backoff(BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS).delay(exponent + 1)


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def message_id(event: WebhookEvent) -> str:
    """`webhook-id`: the same for every attempt of one event, so receivers can deduplicate."""
    return f"msg_{event.id}"


class ConnectionLanes:
    """HTTP connection pools for deliveries, one per attempt in flight.

    One pool carrying many requests at once spends more and more time in its bookkeeping
    (against a local receiver: 1,200 deliveries/s with 1 in flight, 400/s with 32), so each
    attempt borrows a pool of its own, which keeps its connections alive for the next attempt
    to the same receiver. They share one TLS context and one guarded network backend: every
    connection goes to an address the policy allowed. No proxy from the environment is used
    (it would connect in kelpie's place, to addresses kelpie never checked)."""

    def __init__(self, size: int, policy: AddressPolicy) -> None:
        tls = httpx.create_ssl_context()
        backend = GuardedNetworkBackend(policy)
        self._pools = [
            httpcore.AsyncConnectionPool(
                ssl_context=tls,
                max_connections=4,
                max_keepalive_connections=4,
                network_backend=backend,
            )
            for _ in range(size)
        ]
        self._idle: asyncio.Queue[httpcore.AsyncConnectionPool] = asyncio.Queue()
        for pool in self._pools:
            self._idle.put_nowait(pool)

    @contextlib.asynccontextmanager
    async def pool(self) -> AsyncIterator[httpcore.AsyncConnectionPool]:
        pool = await self._idle.get()
        try:
            yield pool
        finally:
            self._idle.put_nowait(pool)

    async def aclose(self) -> None:
        await asyncio.gather(*(pool.aclose() for pool in self._pools))


@dataclass(frozen=True)
class _Credentials:
    secret: str
    token: str
    expires: float


class _Undeliverable(Exception):
    """The event can never be delivered (a refused or unusable target): give it up now."""


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt went, before it is recorded."""

    outcome: Outcome
    error: str | None = None  # why it failed; None when delivered
    give_up: bool = False  # it never can be delivered: the event is dead at once


class Sender(Protocol):
    async def send(self, event: WebhookEvent) -> AttemptResult:
        """One attempt, without writing anything."""

    async def record(self, event: WebhookEvent, result: AttemptResult) -> None:
        """The attempt's outcome, in the store."""


class WebhookSender:
    """Makes one delivery attempt of an event, then records its outcome in the store."""

    def __init__(
        self,
        store: Store,
        lanes: ConnectionLanes,
        max_age_seconds: float,
        policy: AddressPolicy,
    ) -> None:
        self._store = store
        self._lanes = lanes
        self._max_age_seconds = max_age_seconds
        self._policy = policy
        self._credentials: dict[str, _Credentials] = {}

    async def send(self, event: WebhookEvent) -> AttemptResult:
        credentials = await self._credentials_of(event.user_id)
        if credentials is None:
            return AttemptResult(Outcome.NOT_SENT, "the user no longer exists", give_up=True)
        try:
            return await self._post(event, credentials)
        except _Undeliverable as exc:
            return AttemptResult(Outcome.NOT_SENT, str(exc), give_up=True)

    async def record(self, event: WebhookEvent, result: AttemptResult) -> None:
        if result.give_up:
            await self._store.webhook_give_up(event, result.error or "undeliverable")
            log.warning(
                "webhook %s to %s given up without sending it: %s",
                message_id(event),
                redact(event.url),
                result.error,
            )
        elif result.error is None:
            if not await self._store.webhook_delivered(event):
                log.warning(
                    "webhook %s was delivered after its lease ran out; another process may"
                    " send it again (at-least-once)",
                    message_id(event),
                )
        else:
            await self._record_failure(event, result.error)

    async def _post(self, event: WebhookEvent, credentials: _Credentials) -> AttemptResult:
        # What submission refuses, in case the event was stored before the rules existed or
        # under other settings; then every address the host resolves to is checked as the
        # connection is made (`GuardedNetworkBackend`).
        problem = webhook_url_problem(event.url)
        if problem is not None:
            raise _Undeliverable(f"the webhook URL {problem}")
        refusal = self._policy.literal_refusal(event.url)
        if refusal is not None:
            raise _Undeliverable(refusal)
        url = httpx.URL(event.url)
        body = encode_body(event.payload)
        headers = [
            (b"Host", url.netloc),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Content-Type", b"application/json"),
            (b"X-Kelpie-Key", credentials.token.encode()),
            *(
                (name.encode(), value.encode())
                for name, value in signature_headers(
                    credentials.secret, message_id(event), body
                ).items()
            ),
        ]
        target = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        try:
            async with (
                self._lanes.pool() as pool,
                asyncio.timeout(ATTEMPT_TIMEOUT_SECONDS),
                pool.stream(
                    b"POST",
                    target,
                    headers=headers,
                    content=body,
                    extensions={"timeout": _TIMEOUTS},
                ) as response,
            ):
                await _read_at_most(response, MAX_ANSWER_BYTES)
                status = response.status
        except RefusedTarget as exc:
            raise _Undeliverable(exc.reason) from None
        except TimeoutError:
            return AttemptResult(
                Outcome.NO_ANSWER, f"no answer within {ATTEMPT_TIMEOUT_SECONDS:.0f} s"
            )
        except _NO_ANSWER as exc:
            return AttemptResult(Outcome.NO_ANSWER, f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return AttemptResult(Outcome.DELIVERED)
        if 300 <= status < 400:
            return AttemptResult(Outcome.ANSWERED, f"HTTP {status} (redirects are not followed)")
        return AttemptResult(Outcome.ANSWERED, f"HTTP {status}")

    async def _record_failure(self, event: WebhookEvent, error: str) -> None:
        remaining = self._max_age_seconds - _age_seconds(event)
        if remaining <= 0:
            await self._store.webhook_give_up(event, error)
            log.warning(
                "webhook %s to %s given up after %d attempts: %s",
                message_id(event),
                redact(event.url),
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
            redact(event.url),
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


async def _read_at_most(response: httpcore.Response, limit: int) -> None:
    """Reads the answer's body while it stays under `limit` bytes; leaving the rest unread
    makes httpcore drop the connection instead of reusing it."""
    read = 0
    async for chunk in response.aiter_stream():
        read += len(chunk)
        if read >= limit:
            return


def _age_seconds(event: WebhookEvent) -> float:
    created = event.created if event.created.tzinfo else event.created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()


class OutboxDispatcher:
    """Keeps deliveries running, fairly between receivers.

    Claims due events up to the free slots, each receiver's share bounded by its window
    (`ReceiverGate.window`, minus what this process already holds of it); starts at most
    `ReceiverGate.concurrency` attempts per receiver and keeps the rest of its claim at hand,
    to start as its attempts end. Claims again as soon as a receiver that had more has room
    for a full slot's worth, or half the slots are free after a full batch; otherwise sleeps
    until woken or the poll interval passes."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        *,
        poll_interval: float,
        max_in_flight: int = MAX_IN_FLIGHT,
        lease_seconds: float = LEASE_SECONDS,
        gate: ReceiverGate | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._poll_interval = poll_interval
        self._max_in_flight = max_in_flight
        self._lease_seconds = lease_seconds
        self._gate = gate or ReceiverGate()
        self._tasks: set[asyncio.Task[None]] = set()
        # Claimed events waiting for one of their receiver's slots, oldest first.
        self._waiting: dict[str, collections.deque[WebhookEvent]] = {}
        # After a claim that filled the batch, or some receivers' windows: more may be due;
        # `_ready` is set once there is room to claim enough of them.
        self._batch_full = False
        self._saturated: set[str] = set()
        self._ready = asyncio.Event()
        self._stopping = False

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                # Cleared before claiming: a change committed during the claim wakes us again.
                wake.clear()
                self._ready.clear()
                await self._claim()
                await _until_any_set((wake, stop, self._ready), self._poll_interval)
        finally:
            # Unfinished and waiting events stay leased in the store and are retried when the
            # lease ends.
            self._stopping = True
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _held(self, receiver: str) -> int:
        return self._gate.in_flight(receiver) + len(self._waiting.get(receiver, ()))

    async def _claim(self) -> None:
        # Waiting events take no slot: a receiver has some only while a cap's worth of its
        # attempts are in flight, and never more than that, so they stay fewer than slots.
        free = self._max_in_flight - len(self._tasks)
        if free <= 0:
            self._batch_full = True
            return
        allowances = {
            receiver: max(0, self._gate.window(receiver) - self._held(receiver))
            for receiver in {*self._gate.known(), *self._waiting}
        }
        per_receiver = 2 * self._gate.concurrency
        events = await self._store.claim_webhook_events(
            free, self._lease_seconds, per_receiver=per_receiver, allowances=allowances
        )
        self._batch_full = len(events) == free
        claimed = Counter(event.receiver for event in events)
        self._saturated = {
            receiver
            for receiver, count in claimed.items()
            if count >= allowances.get(receiver, per_receiver)
        }
        for event in events:
            self._waiting.setdefault(event.receiver, collections.deque()).append(event)
        for receiver in claimed:
            self._start_waiting(receiver)

    def _start_waiting(self, receiver: str) -> None:
        """Starts the receiver's waiting events while it has free slots; releases them all,
        unattempted, if it is paused."""
        waiting = self._waiting.get(receiver)
        if self._stopping:
            return
        while waiting and self._gate.start(receiver):
            self._spawn(self._attempt(waiting.popleft()), "webhook")
        if waiting and self._gate.window(receiver) == 0:
            delay = self._gate.pause_left(receiver)
            while waiting:
                self._spawn(self._postpone(waiting.popleft(), delay), "webhook-postpone")
        if not waiting:
            self._waiting.pop(receiver, None)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, event: WebhookEvent) -> None:
        result: AttemptResult | None = None
        try:
            result = await self._sender.send(event)
        except Exception:
            log.exception(
                "webhook %s: the attempt failed; retried when its lease ends", message_id(event)
            )
        finally:
            # The receiver's slot is free as soon as it answered: recording the outcome is
            # the store's business, not the receiver's. (Also when cancelled at shutdown.)
            outcome = Outcome.NOT_SENT if result is None else result.outcome
            pause = self._gate.finish(event.receiver, outcome)
            self._start_waiting(event.receiver)
            self._note_room(event.receiver)
        if result is None:
            return
        try:
            await self._sender.record(event, result)
        except Exception:
            # Most likely the store failed: the event stays leased and is attempted again
            # when the lease ends.
            log.exception("webhook %s: recording the delivery attempt failed", message_id(event))
        if pause is not None:
            log.warning(
                "webhooks to %s: no answer several times in a row; its deliveries wait %.0f s",
                redact(event.receiver),
                pause,
            )
        pause_left = self._gate.pause_left(event.receiver)
        if result.outcome is Outcome.NO_ANSWER and pause_left > 0:
            # Its pending events wait for every process, this one's retry included (also
            # when this attempt ended after the pause began).
            try:
                await self._store.postpone_receiver_webhooks(event.receiver, pause_left)
            except Exception:
                log.exception(
                    "webhooks to %s: pausing its deliveries failed", redact(event.receiver)
                )

    async def _postpone(self, event: WebhookEvent, delay: float) -> None:
        try:
            await self._store.webhook_postpone(event, delay)
        except Exception:
            log.exception(
                "webhook %s: postponing failed; retried when its lease ends", message_id(event)
            )

    def _note_room(self, receiver: str) -> None:
        """Wakes the loop once a claim can take enough new events to be worth it."""
        # This attempt's task is still in the set, about to record its outcome.
        batch_has_room = self._batch_full and len(self._tasks) - 1 <= self._max_in_flight // 2
        receiver_has_room = receiver in self._saturated and (
            self._gate.window(receiver) - self._held(receiver) >= self._gate.concurrency
        )
        if batch_has_room or receiver_has_room:
            self._ready.set()


async def _until_any_set(events: tuple[asyncio.Event, ...], at_most_seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=at_most_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_webhook_delivery(
    store: Store,
    *,
    policy: AddressPolicy,
    max_age_seconds: float,
    poll_interval: float,
    wake: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Delivers every user's webhooks until `stop` is set: to the addresses `policy` allows,
    each event tried for `max_age_seconds`; the outbox is read every `poll_interval` seconds
    when idle, and at once when `wake` is set."""
    lanes = ConnectionLanes(MAX_IN_FLIGHT, policy)
    try:
        sender = WebhookSender(store, lanes, max_age_seconds, policy)
        dispatcher = OutboxDispatcher(store, sender, poll_interval=poll_interval)
        await dispatcher.run(stop, wake)
    finally:
        await lanes.aclose()


RETENTION_CHECK_SECONDS = 3600.0


async def run_webhook_retention(
    store: Store, *, retention_seconds: float, stop: asyncio.Event
) -> None:
    """Hourly, forget deliveries that ended (delivered or given up) longer ago than
    `retention_seconds`, so the outbox does not grow for ever. Safe in every process."""
    while not stop.is_set():
        removed = await store.purge_finished_webhooks(retention_seconds)
        if removed:
            log.info("webhooks: forgot %d finished deliveries", removed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_CHECK_SECONDS)
