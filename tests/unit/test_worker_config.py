"""Worker settings from the environment."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from kelpie.settings_errors import describe_settings_errors
from kelpie.worker.config import WorkerSettings
from kelpie.worker.imds import ImdsClient

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


# -- off SaladCloud ---------------------------------------------------------------------------


def _off_saladcloud(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Only the API's address and key, as on a laptop; worker folders under `home`."""
    for name in (
        "SALAD_MACHINE_ID",
        "SALAD_CONTAINER_GROUP_ID",
        "INPUT_DIR",
        "CHECKPOINT_DIR",
        "OUTPUT_DIR",
        "KELPIE_SYNC_ROOTS",
        "KELPIE_WORKER_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KELPIE_API_URL", "http://127.0.0.1:8787")
    monkeypatch.setenv("KELPIE_API_KEY", "k")
    monkeypatch.setenv("KELPIE_WORKER_HOME", str(home))


def test_off_saladcloud_the_worker_name_gives_machine_id_group_and_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _off_saladcloud(monkeypatch, tmp_path)
    monkeypatch.setenv("KELPIE_WORKER_NAME", "trainer-2")
    settings = WorkerSettings()
    assert settings.machine_id == f"{socket.gethostname()}-trainer-2"
    assert settings.container_group_id == "local"
    folder = tmp_path / "trainer-2"
    assert settings.job_dirs == (folder / "input", folder / "checkpoint", folder / "output")
    assert settings.sync_roots == list(settings.job_dirs)


def test_off_saladcloud_two_names_never_share_a_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _off_saladcloud(monkeypatch, tmp_path)
    first, second = WorkerSettings(worker_name="w1"), WorkerSettings(worker_name="w2")
    assert first.machine_id != second.machine_id
    assert not set(first.job_dirs) & set(second.job_dirs)


def test_off_saladcloud_folders_that_are_set_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _off_saladcloud(monkeypatch, tmp_path)
    monkeypatch.setenv("CHECKPOINT_DIR", "/mnt/fast/ckpt")
    settings = WorkerSettings(worker_name="w1")
    assert settings.checkpoint_dir == Path("/mnt/fast/ckpt")
    assert settings.input_dir == tmp_path / "w1" / "input"


def test_on_saladcloud_the_protocol_folders_stay(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _off_saladcloud(monkeypatch, tmp_path)
    monkeypatch.setenv("SALAD_MACHINE_ID", "node-7")
    monkeypatch.setenv("SALAD_CONTAINER_GROUP_ID", "g")
    monkeypatch.setenv("KELPIE_WORKER_NAME", "second")
    settings = WorkerSettings()
    assert (settings.machine_id, settings.container_group_id) == ("node-7", "g")
    assert settings.job_dirs == (Path("/input"), Path("/checkpoint"), Path("/output"))


@pytest.mark.parametrize("name", ["", "a b", "../up", "-dash", "x" * 64])
def test_a_worker_name_that_cannot_be_a_folder_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    _off_saladcloud(monkeypatch, tmp_path)
    monkeypatch.setenv("KELPIE_WORKER_NAME", name)
    with pytest.raises(ValidationError, match="KELPIE_WORKER_NAME"):
        WorkerSettings()


def test_every_problem_is_one_line_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KELPIE_API_URL", "KELPIE_API_KEY", "SALAD_MACHINE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAX_JOB_FAILURES", "many")
    monkeypatch.setenv("OUTPUT_DIR", "relative/out")
    with pytest.raises(ValidationError) as raised:
        WorkerSettings()
    lines = describe_settings_errors(raised.value, WorkerSettings)
    assert [line.split(":")[0] for line in lines] == [
        "KELPIE_API_URL",
        "KELPIE_API_KEY",
        "OUTPUT_DIR",
        "MAX_JOB_FAILURES",
    ]
    assert all("\n" not in line and "pydantic" not in line for line in lines)


async def test_imds_url_comes_from_the_environment() -> None:
    async with ImdsClient.from_env({}) as default:
        assert default.base_url == "http://169.254.169.254"
    async with ImdsClient.from_env({"SALAD_IMDS_URL": "http://127.0.0.1:9/"}) as custom:
        assert custom.base_url == "http://127.0.0.1:9"
