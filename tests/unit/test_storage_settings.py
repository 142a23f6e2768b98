"""S3Settings.from_env: the standard AWS variables, nothing else."""

from __future__ import annotations

import pytest

from kelpie.storage import S3Settings, StorageError


def test_reads_credentials_endpoint_and_region() -> None:
    settings = S3Settings.from_env(
        {
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:8333/",
            "AWS_REGION": "eu-west-3",
        }
    )
    assert settings == S3Settings("AKID", "secret", "token", "http://127.0.0.1:8333", "eu-west-3")


def test_region_falls_back_to_default_region_then_us_east_1() -> None:
    assert S3Settings.from_env({"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"
    assert S3Settings.from_env({}).region == "us-east-1"


def test_s3_specific_endpoint_wins_over_the_generic_one() -> None:
    env = {
        "AWS_ENDPOINT_URL": "https://generic.example",
        "AWS_ENDPOINT_URL_S3": "https://s3.example",
    }
    assert S3Settings.from_env(env).endpoint_url == "https://s3.example"


def test_empty_variables_count_as_unset() -> None:
    settings = S3Settings.from_env({"AWS_ENDPOINT_URL": "", "AWS_SESSION_TOKEN": "  "})
    assert settings.endpoint_url is None
    assert settings.session_token is None


def test_half_a_key_pair_is_refused() -> None:
    with pytest.raises(StorageError, match="must be set together"):
        S3Settings.from_env({"AWS_ACCESS_KEY_ID": "AKID"})


def test_an_endpoint_without_scheme_is_refused() -> None:
    with pytest.raises(StorageError, match="http"):
        S3Settings.from_env({"AWS_ENDPOINT_URL": "127.0.0.1:8333"})


def test_secrets_stay_out_of_repr() -> None:
    settings = S3Settings("AKID", "very-secret", "session-token")
    assert "very-secret" not in repr(settings)
    assert "session-token" not in repr(settings)
