"""What both clients are built from: base URL, key header, timeout and retry budget."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from kelpie import __version__
from kelpie.client.retry import Backoff, Retrying

API_KEY_HEADER = "X-Kelpie-Key"
URL_ENV = "KELPIE_API_URL"
KEY_ENV = "KELPIE_API_KEY"


def normalize_base_url(url: str) -> str:
    """`kelpie.example.com` (as the seed writes it) means `https://kelpie.example.com`; a
    trailing `/` is dropped so paths join cleanly."""
    url = url.strip()
    if not url:
        raise ValueError("the kelpie API URL is empty")
    if "://" not in url:
        url = "https://" + url
    return url.rstrip("/")


@dataclass(frozen=True)
class ClientConfig:
    """The settings a client instance runs with; `with_retries` derives a variant."""

    base_url: str
    api_key: str | None
    timeout: float
    retrying: Retrying

    @classmethod
    def build(
        cls,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_attempts: int,
        backoff: Backoff | None,
    ) -> ClientConfig:
        return cls(
            normalize_base_url(base_url),
            api_key,
            timeout,
            Retrying(max_attempts, backoff or Backoff()),
        )

    def with_max_attempts(self, max_attempts: int) -> ClientConfig:
        return replace(self, retrying=replace(self.retrying, max_attempts=max_attempts))

    def http_args(self) -> dict[str, Any]:
        """Keyword arguments shared by `httpx.Client` and `httpx.AsyncClient`."""
        headers = {"User-Agent": f"kelpie-client/{__version__}"}
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}


def env_settings() -> tuple[str, str | None]:
    """`KELPIE_API_URL` (required) and `KELPIE_API_KEY` from the environment."""
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        raise ValueError(f"{URL_ENV} is not set")
    return url, os.environ.get(KEY_ENV) or None
