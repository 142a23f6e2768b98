"""Webhooks: Standard Webhooks signatures and the delivery loop draining the store's outbox.

`kelpie.webhooks.delivery` (the loop) is imported by the API only; receivers and clients need
nothing but `kelpie.webhooks.signing`.
"""

from __future__ import annotations

from kelpie.webhooks.signing import (
    BadSignature,
    StaleTimestamp,
    WebhookVerificationError,
    signature_headers,
    verify,
)

__all__ = [
    "BadSignature",
    "StaleTimestamp",
    "WebhookVerificationError",
    "signature_headers",
    "verify",
]
