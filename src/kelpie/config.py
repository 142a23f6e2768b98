"""Typed settings for `kelpie serve`, read from the environment and CLI flags."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kelpie.webhooks.targets import parse_allowed_networks

# An admin key guards every user's jobs: long enough that it cannot be guessed.
MIN_ADMIN_KEY_LENGTH = 32


class ServerSettings(BaseSettings):
    """Everything the API server reads at start; validated before anything listens."""

    model_config = SettingsConfigDict(env_prefix="KELPIE_", extra="ignore")

    database_url: str = "sqlite:///./kelpie.db"
    admin_key: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8787
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    max_blocked_jobs: Annotated[int, Field(ge=1)] = 5
    autoscale_interval_s: Annotated[float, Field(gt=0)] = 300.0
    webhook_poll_interval_s: Annotated[float, Field(gt=0)] = 0.5
    webhook_max_age_s: Annotated[float, Field(gt=0)] = 24 * 3600.0
    webhook_retention_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    # Request limits: a body cap (a batch of 1,000 ordinary jobs takes well under 1 MiB),
    # the time a request's line and headers may take to arrive, and how long a connection
    # may sit silent while kelpie waits for it (between requests, or within a body).
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    idle_timeout_s: Annotated[int, Field(ge=1)] = 30
    # Comma-separated CIDR networks webhooks may reach although they are not public
    # (loopback, private, link-local, ...); empty: public addresses only.
    webhook_allowed_networks: str = ""
    log_level: str = "info"
    # `/metrics` answers only `Authorization: Bearer <metrics_key>` when set; open otherwise.
    metrics_key: str | None = None

    @field_validator("admin_key")
    @classmethod
    def _long_admin_key(cls, key: str | None) -> str | None:
        if key is not None and len(key) < MIN_ADMIN_KEY_LENGTH:
            raise ValueError(
                f"must be at least {MIN_ADMIN_KEY_LENGTH} characters, not"
                f" {len(key)}; make one with: python3 -c 'import secrets;"
                " print(secrets.token_urlsafe(32))'"
            )
        return key

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return url

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _cidr_networks(cls, text: str) -> str:
        return ",".join(str(network) for network in parse_allowed_networks(text))
