"""Client construction and error wording: pure logic, no network."""

from __future__ import annotations

import pytest

from kelpie.client import AsyncKelpieClient, BadRequest, Conflict, KelpieClient, KelpieError
from kelpie.client.config import normalize_base_url


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("kelpie.example.com", "https://kelpie.example.com"),
        ("kelpie.example.com/", "https://kelpie.example.com"),
        ("http://127.0.0.1:8787/", "http://127.0.0.1:8787"),
        ("  https://kelpie.example.com/base/ ", "https://kelpie.example.com/base"),
    ],
)
def test_a_url_without_scheme_means_https(given: str, used: str) -> None:
    assert normalize_base_url(given) == used


def test_an_empty_url_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_base_url("  ")


def test_from_env_reads_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KELPIE_API_URL", "kelpie.example.com")
    monkeypatch.setenv("KELPIE_API_KEY", "k-123")
    with KelpieClient.from_env(timeout=3.0) as client:
        assert client.base_url == "https://kelpie.example.com"
        assert client._http.headers["X-Kelpie-Key"] == "k-123"


async def test_from_env_needs_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KELPIE_API_URL", raising=False)
    with pytest.raises(ValueError, match="KELPIE_API_URL"):
        AsyncKelpieClient.from_env()


def test_no_key_sends_no_key_header() -> None:
    with KelpieClient("http://127.0.0.1:1", None) as client:
        assert "X-Kelpie-Key" not in client._http.headers


def test_an_error_reads_as_one_clean_line() -> None:
    err = Conflict(409, "Conflict", "Job is not held\n  by machine m1")
    assert str(err) == "Job is not held by machine m1"
    assert (err.status_code, err.error) == (409, "Conflict")
    assert str(KelpieError(418, "Teapot", "")) == "Teapot"
    assert isinstance(err, KelpieError)


def test_a_rejected_batch_names_the_item() -> None:
    err = BadRequest(400, "Invalid request", "command: required field is missing", {"index": 2})
    assert str(err) == "batch item 2: command: required field is missing"
