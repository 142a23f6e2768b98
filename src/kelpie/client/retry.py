"""When a failed call is tried again, and after how long: the one place both clients ask.

Two policies cover every endpoint (each endpoint states its own in `kelpie.client.calls`):

- `IDEMPOTENT`: repeating the request cannot do harm (reads, deletes, heartbeats, the
  worker's completed/failed/interrupted reports, which the server fences by holder, and
  submissions, which carry an `Idempotency-Key`). Retried on any transport error (connect,
  timeouts, dropped connections) and on 429/502/503/504.
- `UNSENT_ONLY`: repeating could do something twice (claim a second job, mint a second
  key). Retried only when the request certainly never reached the server: the connection
  could not be made, or no pooled connection became free. Never after a read timeout or a
  5xx, since the server may have acted.

Delays are exponential backoff with full jitter; a `Retry-After` header on 429/503 wins.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from kelpie.backoff import Backoff as JitteredBackoff

logger = logging.getLogger("kelpie.client")

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# Errors raised before a single byte of the request was sent.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)

# What one send produced: an answer, or the error that stood in for one.
Outcome = httpx.Response | httpx.RequestError


class RetryPolicy(enum.Enum):
    """How safe it is to send a request again after a failure whose effect is unknown."""

    IDEMPOTENT = "idempotent"
    UNSENT_ONLY = "unsent-only"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: after failed attempt n, wait a uniform draw from
    [0, min(cap, base * 2**(n-1))]; a `Retry-After` from the server wins, up to a limit."""

    base: float = 0.2
    cap: float = 10.0
    max_retry_after: float = 60.0

    def delay(self, failed_attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return JitteredBackoff(self.base, self.cap).delay(failed_attempt)


def is_transient(policy: RetryPolicy, outcome: Outcome) -> bool:
    """Whether `outcome` is a failure that `policy` allows sending the request again for."""
    if isinstance(outcome, httpx.Response):
        return policy is RetryPolicy.IDEMPOTENT and outcome.status_code in RETRYABLE_STATUS
    if policy is RetryPolicy.UNSENT_ONLY:
        return isinstance(outcome, NOT_SENT_ERRORS)
    return isinstance(outcome, httpx.TransportError)


def retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """The `Retry-After` header in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


@dataclass(frozen=True)
class Retrying:
    """A retry budget (`max_attempts` sends in all) and the backoff between sends."""

    max_attempts: int = 5
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay_before_retry(
        self, policy: RetryPolicy, outcome: Outcome, attempt: int, what: str
    ) -> float | None:
        """Seconds to wait before sending again, or None: stop and report `outcome`."""
        if attempt >= self.max_attempts or not is_transient(policy, outcome):
            return None
        retry_after = None
        if isinstance(outcome, httpx.Response):
            retry_after = retry_after_seconds(outcome)
            reason = f"HTTP {outcome.status_code}"
        else:
            reason = f"{type(outcome).__name__}: {outcome}"
        delay = self.backoff.delay(attempt, retry_after)
        logger.warning(
            "%s failed (%s); attempt %d of %d in %.2f s",
            what,
            reason,
            attempt + 1,
            self.max_attempts,
            delay,
        )
        return delay
