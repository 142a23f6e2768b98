"""Worker settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kelpie.worker.config import WorkerSettings

BASE = {
    "KELPIE_API_URL": "kelpie.example.com",
    "KELPIE_API_KEY": "s3cret-key",
    "SALAD_MACHINE_ID": "m",
    "SALAD_CONTAINER_GROUP_ID": "g",
}


def test_defaults_follow_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    for name in ("INPUT_DIR", "CHECKPOINT_DIR", "OUTPUT_DIR", "KELPIE_SYNC_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    settings = WorkerSettings()
    assert settings.api_url == "https://kelpie.example.com"
    assert settings.job_dirs == (Path("/input"), Path("/checkpoint"), Path("/output"))
    assert settings.sync_roots == list(settings.job_dirs)
    assert settings.max_time_with_no_work_s == 0
    assert settings.max_job_failures == 3
    assert "s3cret-key" not in repr(settings)


def test_sync_roots_are_a_path_list(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KELPIE_SYNC_ROOTS", "/models:/data")
    assert WorkerSettings().sync_roots == [Path("/models"), Path("/data")]


def test_relative_dirs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OUTPUT_DIR", "out")
    with pytest.raises(ValidationError, match="must be an absolute path"):
        WorkerSettings()


@pytest.mark.parametrize("value", ["0.5", "1", "0.05"])
def test_checkpoint_settle_time_is_read(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    for name, base in BASE.items():
        monkeypatch.setenv(name, base)
    monkeypatch.setenv("KELPIE_WORKER_CHECKPOINT_SETTLE_S", value)
    assert WorkerSettings().checkpoint_settle_s == float(value)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "soon"])
def test_checkpoint_settle_time_beyond_one_second_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    for name, base in BASE.items():
        monkeypatch.setenv(name, base)
    monkeypatch.setenv("KELPIE_WORKER_CHECKPOINT_SETTLE_S", value)
    with pytest.raises(ValidationError, match="KELPIE_WORKER_CHECKPOINT_SETTLE_S"):
        WorkerSettings()


def test_checkpoint_settle_time_defaults_to_half_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, base in BASE.items():
        monkeypatch.setenv(name, base)
    monkeypatch.delenv("KELPIE_WORKER_CHECKPOINT_SETTLE_S", raising=False)
    assert WorkerSettings().checkpoint_settle_s == 0.5
