"""kelpie's Standard Webhooks signatures, checked against the `standardwebhooks` reference
library in both directions, and the receiver-side `verify`."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from kelpie.webhooks.delivery import encode_body, retry_delay
from kelpie.webhooks.signing import (
    BadSignature,
    StaleTimestamp,
    WebhookVerificationError,
    secret_key,
    signature_headers,
    verify,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = encode_body(
    {"status": "completed", "job_id": "j-1", "machine_id": "m-1", "container_group_id": "g"}
)


def test_reference_library_accepts_kelpie_signature() -> None:
    headers = signature_headers(SECRET, "msg_42", BODY)

    payload = standardwebhooks.Webhook(SECRET).verify(BODY, headers)

    assert payload["status"] == "completed"


def test_signature_matches_reference_library_byte_for_byte() -> None:
    stamp = 1_700_000_000
    reference = standardwebhooks.Webhook(SECRET).sign(
        "msg_42", datetime.fromtimestamp(stamp, tz=UTC), BODY.decode()
    )

    assert signature_headers(SECRET, "msg_42", BODY, stamp)["webhook-signature"] == reference


def test_verify_accepts_reference_library_signature() -> None:
    now = int(time.time())
    signature = standardwebhooks.Webhook(SECRET).sign(
        "msg_7", datetime.fromtimestamp(now, tz=UTC), BODY.decode()
    )
    headers = {"webhook-id": "msg_7", "webhook-timestamp": str(now), "webhook-signature": signature}

    verify(SECRET, headers, BODY)


def test_verify_accepts_any_header_case_and_one_of_several_signatures() -> None:
    headers = signature_headers(SECRET, "msg_1", BODY)
    headers["webhook-signature"] = "v1,b2xkLXNlY3JldA== " + headers["webhook-signature"]

    verify(SECRET, {name.upper(): value for name, value in headers.items()}, BODY)


def test_tampered_body_fails_verification() -> None:
    headers = signature_headers(SECRET, "msg_1", BODY)
    tampered = BODY.replace(b"completed", b"failed")

    with pytest.raises(BadSignature):
        verify(SECRET, headers, tampered)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(tampered, headers)


def test_changed_id_or_timestamp_fails_verification() -> None:
    headers = signature_headers(SECRET, "msg_1", BODY)

    with pytest.raises(BadSignature):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, BODY)
    later = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(BadSignature):
        verify(SECRET, {**headers, "webhook-timestamp": later}, BODY)


def test_other_secret_fails_verification() -> None:
    other = "whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()

    with pytest.raises(BadSignature):
        verify(other, signature_headers(SECRET, "msg_1", BODY), BODY)


@pytest.mark.parametrize("age", [-301, 301, 3600])
def test_timestamp_beyond_five_minutes_is_stale(age: int) -> None:
    headers = signature_headers(SECRET, "msg_1", BODY, int(time.time()) - age)

    with pytest.raises(StaleTimestamp):
        verify(SECRET, headers, BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, headers)


def test_timestamp_within_five_minutes_is_fresh() -> None:
    headers = signature_headers(SECRET, "msg_1", BODY, int(time.time()) - 290)

    verify(SECRET, headers, BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails_verification(missing: str) -> None:
    headers = signature_headers(SECRET, "msg_1", BODY)
    del headers[missing]

    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(SECRET, headers, BODY)


def test_non_numeric_timestamp_fails_verification() -> None:
    headers = {**signature_headers(SECRET, "msg_1", BODY), "webhook-timestamp": "yesterday"}

    with pytest.raises(WebhookVerificationError, match="unix seconds"):
        verify(SECRET, headers, BODY)


def test_secret_prefix_is_optional_and_garbage_is_refused() -> None:
    assert secret_key(SECRET) == secret_key(SECRET.removeprefix("whsec_"))
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not base64!")


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (500, 300.0)]
)
def test_retry_delay_is_full_jitter_under_a_doubling_ceiling(failures: int, ceiling: float) -> None:
    delays = [retry_delay(failures) for _ in range(2000)]

    assert all(0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling * 0.9  # spread over the whole range, not a fixed step
    assert min(delays) < ceiling * 0.1
