"""Where the bucket lives and how to sign requests, read from the standard AWS variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kelpie.storage.errors import StorageError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Credentials and endpoint for S3 or an S3-compatible server (SeaweedFS, MinIO, R2).

    With no `endpoint_url` the store talks to AWS; with one, requests are path-style
    (`<endpoint>/<bucket>/<key>`), which every S3-compatible server understands.
    """

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        """Read `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
        `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, and `AWS_REGION` or `AWS_DEFAULT_REGION`.

        Raises StorageError when only one half of the key pair is set, or the endpoint is not
        an http(s) URL.
        """
        access_key = _non_empty(env, "AWS_ACCESS_KEY_ID")
        secret_key = _non_empty(env, "AWS_SECRET_ACCESS_KEY")
        if (access_key is None) != (secret_key is None):
            raise StorageError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
        endpoint = _non_empty(env, "AWS_ENDPOINT_URL_S3") or _non_empty(env, "AWS_ENDPOINT_URL")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise StorageError(f"AWS_ENDPOINT_URL must start with http:// or https://: {endpoint}")
        return cls(
            access_key_id=access_key,
            secret_access_key=secret_key,
            session_token=_non_empty(env, "AWS_SESSION_TOKEN"),
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            region=_non_empty(env, "AWS_REGION")
            or _non_empty(env, "AWS_DEFAULT_REGION")
            or DEFAULT_REGION,
        )


def _non_empty(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None
