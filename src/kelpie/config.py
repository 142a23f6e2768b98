"""Typed settings for `kelpie serve`, read from the environment and CLI flags."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    log_level: str = "info"
    # `/metrics` answers only `Authorization: Bearer <metrics_key>` when set; open otherwise.
    metrics_key: str | None = None

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return url
