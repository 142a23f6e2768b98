"""One error type for callers, and the rule that decides which failures are worth retrying."""

from __future__ import annotations

import re
import zlib

from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PreconditionError

# Failures that another attempt cannot fix: a missing bucket or key, refused credentials,
# a local file that vanished or a full disk, data that is not gzip.
_PERMANENT = (OSError, zlib.error, EOFError)
_STATUS = re.compile(r"status code: (\d{3})")
# obstore's report on a request it retried: "... in 6.1s, after 10 retries, max_retries: 10,
# retry_timeout: 120s ...". Durations are Rust's Debug form.
_DURATION = r"([\d.]+)(ns|µs|us|ms|s)"
_RETRIED = re.compile(r"after \d+ retries")
_RETRY_REPORT = re.compile(
    rf" in {_DURATION}, after (\d+) retries, max_retries: (\d+), retry_timeout: {_DURATION}"
)
_SECONDS_PER = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")
_HINTS = {
    "NoSuchBucket": "the bucket does not exist",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
    "AccessDenied": "these credentials may not do this",
}
MAX_SUMMARY_CHARS = 400


class StorageError(Exception):
    """An S3 transfer failed for good: after retries, or at once when retrying cannot help.

    The message names the bucket and key and the cause. `transient` is True when the storage
    was unreachable or failing (5xx, 429, timeouts) for as long as retries went on: a storage
    outage, which another attempt later may not meet, rather than a mistake (missing bucket,
    refused credentials) that no retry fixes.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass: connection refused/reset, timeouts, 5xx and 429."""
    if isinstance(exc, ConnectionError | TimeoutError | PreconditionError):
        return True  # PreconditionError: the object was replaced mid-download; fetch it anew
    if isinstance(exc, _PERMANENT) or not isinstance(exc, ObstoreError):
        return False
    text = str(exc)
    if _retries_spent(text):
        return False
    status = _STATUS.search(text)
    if status is None:
        # A transport failure obstore does not retry itself: a timed-out write, a body
        # cut off mid-stream.
        return True
    code = int(status.group(1))
    return code >= 500 or code in (408, 429)


def is_transient_cause(text: str) -> bool:
    """True when an error report whose retries are spent was about an outage: a 5xx, 408, 429
    or a transport failure, not a 4xx answer."""
    status = _STATUS.search(text)
    if status is None:
        return True
    code = int(status.group(1))
    return code >= 500 or code in (408, 429)


def _retries_spent(text: str) -> bool:
    """True when obstore stopped retrying because its own budget (count or time) ran out.

    obstore also stops early, after a retry or two, on transport errors it does not retry
    (a connection reset while it was being set up); those are still worth another attempt.
    """
    if not _RETRIED.search(text):
        return False
    report = _RETRY_REPORT.search(text)
    if report is None:
        return True  # a report we cannot read: trust that obstore did its best
    elapsed = float(report.group(1)) * _SECONDS_PER[report.group(2)]
    retries, max_retries = int(report.group(3)), int(report.group(4))
    timeout = float(report.group(5)) * _SECONDS_PER[report.group(6)]
    return retries >= max_retries or elapsed >= timeout


def summarize(exc: BaseException) -> str:
    """A one-line cause: the S3 error code and message when there is one."""
    text = str(exc)
    code = _S3_CODE.search(text)
    if code is not None:
        message = _S3_MESSAGE.search(text)
        summary = code.group(1) + (f": {message.group(1)}" if message else "")
        hint = _HINTS.get(code.group(1))
        return f"{summary} ({hint})" if hint else summary
    head = text.split("\n\nDebug source", 1)[0].strip() or type(exc).__name__
    head = " ".join(head.split())
    if len(head) > MAX_SUMMARY_CHARS:
        head = head[: MAX_SUMMARY_CHARS - 1] + "…"
    return head


class FileChangedError(StorageError):
    """The local file changed while it was read for upload; nothing was stored.

    Not a failure of the transfer: the file is being written, so the caller looks again
    later instead of counting an error. A multipart upload was aborted, never completed.
    """


class ObjectDamaged(StorageError):
    """An object is missing, or does not read back as the size and SHA-256 it was stored with.

    Another try would read the same bytes, so it is not retried; `reason` says which check
    failed.
    """

    def __init__(self, bucket: str, key: str, reason: str) -> None:
        super().__init__(f"s3://{bucket}/{key}: {reason}")
        self.bucket = bucket
        self.key = key
        self.reason = reason
