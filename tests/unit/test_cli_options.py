"""The `kelpie` command line without an API: options, help, and job files and flags."""

from __future__ import annotations

import io
import subprocess
import sys
import sysconfig
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kelpie.cli import main
from kelpie.cli.jobs import JobFlags, load_document, submissions, watch_line
from kelpie.schemas import AttemptOut, JobOut

API_COMMANDS = [
    ["jobs", "submit"],
    ["jobs", "list"],
    ["jobs", "get"],
    ["jobs", "watch"],
    ["jobs", "cancel"],
    ["jobs", "attempts"],
    ["jobs", "logs"],
    ["groups", "purge"],
    ["users", "create"],
    ["users", "delete-all"],
    ["keys", "create"],
    ["whoami"],
    ["scaling-rules", "create"],
    ["scaling-rules", "list"],
    ["scaling-rules", "get"],
    ["scaling-rules", "update"],
    ["scaling-rules", "delete"],
]


@pytest.mark.parametrize("command", API_COMMANDS, ids=" ".join)
def test_every_api_command_shows_its_connection_options_and_env_vars(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], env={"KELPIE_API_KEY": "s3cr3t"})
    assert result.exit_code == 0, result.output
    for text in ("--api-url", "KELPIE_API_URL", "--api-key", "KELPIE_API_KEY", "--json"):
        assert text in result.output
    assert "s3cr3t" not in result.output


def test_a_command_without_a_key_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["jobs", "list"], env={"KELPIE_API_KEY": ""})
    assert result.exit_code == 2
    assert "no API key: pass --api-key or set KELPIE_API_KEY" in result.output


def test_submit_without_a_job_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["jobs", "submit", "--api-key", "k"])
    assert result.exit_code == 2
    assert "give a job FILE" in result.output


def test_serve_keeps_its_options() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for text in ("--host", "KELPIE_HOST", "--port", "KELPIE_PORT", "--workers", "KELPIE_WORKERS"):
        assert text in result.output


def named(text: str, name: str) -> io.StringIO:
    stream = io.StringIO(text)
    stream.name = name
    return stream


def test_a_job_file_may_be_yaml_or_json() -> None:
    yaml_job = "command: python\narguments: [main.py]\ncontainer_group_id: g1\n"
    json_job = '{"command": "python", "arguments": ["main.py"], "container_group_id": "g1"}'
    assert load_document(named(yaml_job, "job.yaml")) == load_document(named(json_job, "job.json"))


def test_yaml_dates_become_strings_not_crashes() -> None:
    assert load_document(named("environment: {DAY: 2024-04-19}\n", "j.yaml")) == {
        "environment": {"DAY": "2024-04-19"}
    }


def test_yaml_numbers_and_booleans_in_the_environment_become_strings() -> None:
    text = "command: python\nenvironment: {STEPS: 40, LR: 0.5, DEBUG: true, FAST: no, NAME: x}\n"
    [job] = submissions(named(text, "job.yaml"), None, JobFlags(environment=("EXTRA=1",)))
    assert job["environment"] == {
        "STEPS": "40",
        "LR": "0.5",
        "DEBUG": "true",
        "FAST": "false",
        "NAME": "x",
        "EXTRA": "1",
    }
    batch = named("- command: python\n  environment: {STEPS: 40}\n", "batch.yaml")
    [batch_job] = submissions(None, batch, JobFlags())
    assert batch_job["environment"] == {"STEPS": "40"}


def test_other_values_in_the_environment_are_left_for_the_api_to_refuse() -> None:
    [job] = submissions(named("environment: {A: null, B: [1]}\n", "j.yaml"), None, JobFlags())
    assert job["environment"] == {"A": None, "B": [1]}


def test_an_unparseable_file_is_a_bad_parameter() -> None:
    with pytest.raises(click.BadParameter, match=r"job\.yaml is neither JSON nor YAML"):
        load_document(named("command: [unclosed\n", "job.yaml"))


def test_flags_build_a_job_and_override_the_file() -> None:
    flags = JobFlags(
        command="python",
        arguments=("train.py", "--lr=0.1"),
        environment=("A=1", "B=x=y"),
        container_group_id="g2",
        input_url="s3://bucket/in/job1",
        output_url="s3://bucket",
        max_failures=5,
        compression=True,
    )
    file = named(
        '{"command": "bash", "container_group_id": "g1", "environment": {"A": "0", "C": "3"}}', "j"
    )
    [job] = submissions(file, None, flags)
    assert job == {
        "command": "python",
        "arguments": ["train.py", "--lr=0.1"],
        "environment": {"A": "1", "B": "x=y", "C": "3"},
        "container_group_id": "g2",
        "input_bucket": "bucket",
        "input_prefix": "in/job1",
        "output_bucket": "bucket",
        "output_prefix": "",
        "max_failures": 5,
        "compression": True,
    }


def test_batch_flags_apply_to_every_job() -> None:
    batch = named('[{"command": "a"}, {"command": "b", "container_group_id": "x"}]', "b.json")
    jobs = submissions(None, batch, JobFlags(container_group_id="g1"))
    assert [(j["command"], j["container_group_id"]) for j in jobs] == [("a", "g1"), ("b", "g1")]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (JobFlags(command="x", input_url="bucket/prefix"), "s3://BUCKET/PREFIX"),
        (JobFlags(command="x", checkpoint_url="s3:///prefix"), "s3://BUCKET/PREFIX"),
        (JobFlags(command="x", environment=("NOEQUALS",)), "NAME=VALUE"),
    ],
)
def test_malformed_flags_are_bad_parameters(flags: JobFlags, message: str) -> None:
    with pytest.raises(click.BadParameter, match=message):
        submissions(None, None, flags)


def test_a_single_job_file_must_hold_one_job() -> None:
    with pytest.raises(click.BadParameter, match="use --batch"):
        submissions(named("[]", "j.json"), None, JobFlags())


def test_watch_line_shows_progress() -> None:
    now = datetime(2024, 4, 19, 18, 0, 0, tzinfo=UTC)
    job = JobOut(
        id="j1",
        user_id="u1",
        status="running",
        created=now,
        heartbeat=now - timedelta(seconds=4),
        num_heartbeats=7,
        num_failures=1,
        machine_id="m2",
        command="python",
        container_group_id="g1",
    )
    attempts = [
        AttemptOut(machine_id="m1", started=now, outcome="failed", exit_code=1),
        AttemptOut(machine_id="m2", started=now, outcome="running"),
    ]
    assert watch_line(job, attempts) == (
        "j1  running  machine m2  attempts 2  heartbeats 7  failures 1/3"
    )
    assert watch_line(job, attempts, now).endswith("last beat 4 s ago")


def test_the_cli_starts_without_loading_the_client_or_pydantic() -> None:
    # `kelpie jobs list --help` must not pay for httpx and pydantic (about 0.2 s of CPU).
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, kelpie.cli; print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not {"httpx", "pydantic", "yaml", "kelpie.client", "kelpie.schemas"} & set(loaded)


def test_the_clis_light_constants_agree_with_the_client_and_schemas() -> None:
    from kelpie.cli import base
    from kelpie.client.config import KEY_ENV, URL_ENV
    from kelpie.schemas import JOB_STATUSES

    assert (base.KEY_ENV, base.URL_ENV, base.JOB_STATUSES) == (KEY_ENV, URL_ENV, JOB_STATUSES)


@pytest.mark.parametrize("command", ["demo", "dev"])
def test_demo_and_dev_without_the_local_extra_say_how_to_get_it(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A kelpie installed without `kelpie[local]`: no `weed` beside python, none on PATH.
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(main, [command])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "pip install 'kelpie[local]'" in result.stderr


def test_scheduling_flags_merge_over_a_job_file() -> None:
    flags = JobFlags(
        labels=("team=vision",),
        fail_exit_codes=(2,),
        max_duration=60,
        name="n",
    )
    job = {
        "command": "x",
        "labels": {"team": "audio", "stage": "a"},
        "retry": {"interruption_exit_codes": [143]},
    }
    merged = flags.apply(job)
    assert merged["labels"] == {"team": "vision", "stage": "a"}
    assert merged["retry"] == {"interruption_exit_codes": [143], "fail_exit_codes": [2]}
    assert (merged["max_duration"], merged["name"]) == (60, "n")
    assert not flags.is_empty()


@pytest.mark.parametrize(
    ("given", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800)]
)
def test_durations_take_a_unit(given: str, seconds: int) -> None:
    from kelpie.cli.base import parse_duration

    assert (
        parse_duration(click.Context(click.Command("x")), click.Option(["--d"]), given) == seconds
    )


@pytest.mark.parametrize("given", ["2x", "h", "-5m", "0"])
def test_a_bad_duration_is_a_usage_error(given: str) -> None:
    result = CliRunner().invoke(
        main, ["jobs", "submit", "--api-key", "k", "--command", "x", "--max-duration", given]
    )
    assert result.exit_code == 2
    assert "--max-duration" in result.output
