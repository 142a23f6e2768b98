"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign what kelpie sends,
verify what a receiver gets.

A delivery carries `webhook-id` (stable across retries), `webhook-timestamp` (unix seconds of
this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
keyed with the base64-decoded part of the user's `whsec_…` secret. Any Standard Webhooks
library verifies it; `verify` here is the same check for receivers written against kelpie.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
# How far a delivery's timestamp may lie from the receiver's clock (replay protection).
TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(Exception):
    """A delivery that must be rejected (answer 401): missing headers, a bad signature or a
    timestamp outside the tolerance."""


class StaleTimestamp(WebhookVerificationError):
    """The timestamp is further than the tolerance from now: a replay, or a skewed clock."""


class BadSignature(WebhookVerificationError):
    """No `v1` signature matches: the body, id or timestamp was altered, or the secret differs."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret (the prefix is optional)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not base64 after its whsec_ prefix") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one delivery attempt."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed now unless `timestamp` is given."""
    when = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(when),
        "webhook-signature": sign(secret_key(secret), msg_id, when, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a delivery as a receiver must; raises `WebhookVerificationError` if it is not
    authentic and fresh. `headers` may use any case; `body` is the raw request body."""
    lower = {name.lower(): value for name, value in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not unix seconds") from None
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance_seconds:
        raise StaleTimestamp(
            f"webhook-timestamp is {skew:+.0f} s from now (tolerance {tolerance_seconds:.0f} s)"
        )
    expected = sign(secret_key(secret), msg_id, timestamp, body).encode()
    # The header may hold several space-separated signatures (secret rotation): any may match.
    candidates = (candidate.encode(errors="replace") for candidate in signatures.split())
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise BadSignature("no webhook-signature matches the body")
