"""The `kelpie` command against a real `kelpie serve`: output, `--json`, exit codes, errors.

Most commands run through click's CliRunner (in-process, fast); the error cases and
`jobs watch` run as real subprocesses to prove the exit codes and that no traceback leaks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kelpie.cli import main
from kelpie.client import KelpieClient
from tests.support.api import new_admin_key
from tests.support.processes import ServerProcess, free_port, start_server

KELPIE = [sys.executable, "-m", "kelpie"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("cli-api")
    server = start_server(f"sqlite:///{directory / 'k.db'}", new_admin_key(), directory / "logs")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Cli:
    """Runs `kelpie` as one user against the test server."""

    url: str
    key: str
    user_id: str

    def env(self, key: str | None = None) -> dict[str, str]:
        return {"KELPIE_API_URL": self.url, "KELPIE_API_KEY": self.key if key is None else key}

    def run(
        self, *args: str, code: int = 0, key: str | None = None, stdin: str | None = None
    ) -> Result:
        result = CliRunner().invoke(main, list(args), env=self.env(key), input=stdin)
        assert result.exit_code == code, (result.output, result.exception)
        return result

    def json(self, *args: str, key: str | None = None) -> Any:
        return json.loads(self.run(*args, "--json", key=key).stdout)

    def process(
        self, *args: str, key: str | None = None, url: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env(key)}
        if url is not None:
            env["KELPIE_API_URL"] = url
        return subprocess.run([*KELPIE, *args], env=env, capture_output=True, text=True, timeout=60)

    def client(self) -> KelpieClient:
        return KelpieClient(self.url, self.key)


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Cli:
    with KelpieClient(server.url, server.admin_key) as client:
        me = client.me()
    return Cli(server.url, server.admin_key, me.id)


@pytest.fixture
def cli(admin: Cli) -> Cli:
    user_id = admin.run("users", "create", f"user-{uuid.uuid4().hex[:12]}").stdout.strip()
    key = admin.run("keys", "create", user_id).stdout.strip()
    return Cli(admin.url, key, user_id)


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    """Exactly one `error:` line on stderr, nothing on stdout, no traceback."""
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: "), proc.stderr
    assert message in proc.stderr, proc.stderr


# -- submitting -------------------------------------------------------------------------------


def test_submit_with_flags_prints_the_id(cli: Cli, group: str) -> None:
    job_id = cli.run(
        "jobs",
        "submit",
        "--command",
        "python",
        "--arg",
        "train.py",
        "--arg",
        "--fast",
        "--env",
        "LR=0.1",
        "--group",
        group,
        "--input",
        "s3://bucket/in/job1",
        "--max-failures",
        "2",
        "--heartbeat-interval",
        "5",
        "--compression",
        "--webhook",
        "https://example.com/hook",
        "--priority",
        "-7",
    ).stdout.strip()
    job = cli.json("jobs", "get", job_id)
    assert job["id"] == job_id
    assert job["arguments"] == ["train.py", "--fast"]
    assert job["environment"] == {"LR": "0.1"}
    assert (job["input_bucket"], job["input_prefix"]) == ("bucket", "in/job1/")
    assert (job["max_failures"], job["heartbeat_interval"], job["compression"]) == (2, 5, True)
    assert job["webhook"] == "https://example.com/hook"
    assert job["priority"] == -7


def test_submit_a_yaml_file_with_a_flag_override(cli: Cli, group: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("command: bash\narguments: [-c, 'exit 0']\ncontainer_group_id: other\n")
    job = cli.json("jobs", "submit", str(path), "--group", group)
    assert (job["command"], job["arguments"], job["container_group_id"]) == (
        "bash",
        ["-c", "exit 0"],
        group,
    )
    assert job["status"] == "pending"


def test_submit_json_from_stdin(cli: Cli, group: str) -> None:
    body = json.dumps({"command": "python", "container_group_id": group})
    job_id = cli.run("jobs", "submit", "-", stdin=body).stdout.strip()
    assert uuid.UUID(job_id)


def test_submit_a_batch(cli: Cli, group: str, tmp_path: Path) -> None:
    path = tmp_path / "batch.json"
    path.write_text(json.dumps([{"command": "a"}, {"command": "b"}]))
    ids = cli.run("jobs", "submit", "--batch", str(path), "--group", group).stdout.split()
    assert len(ids) == 2
    jobs = cli.json("jobs", "submit", "--batch", str(path), "--group", group)
    assert [job["command"] for job in jobs] == ["a", "b"]


def test_an_invalid_job_is_an_api_error_naming_the_field(cli: Cli, group: str) -> None:
    result = cli.run(
        "jobs", "submit", "--command", "x", "--group", group, "--max-failures", "0", code=1
    )
    assert result.stderr.startswith("error: max_failures")


def test_an_invalid_batch_names_the_item(cli: Cli, group: str, tmp_path: Path) -> None:
    path = tmp_path / "batch.yaml"
    path.write_text(f"- command: a\n  container_group_id: {group}\n- container_group_id: {group}\n")
    result = cli.run("jobs", "submit", "--batch", str(path), code=1)
    assert result.stderr.startswith("error: batch item 1: command")


# -- reading ----------------------------------------------------------------------------------


def test_list_shows_a_table_and_json(cli: Cli, group: str) -> None:
    ids = [
        cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
        for _ in range(3)
    ]
    cli.run("jobs", "cancel", ids[0])

    lines = cli.run("jobs", "list", "--group", group).stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "GROUP", "CREATED", "FAILURES", "MACHINE"]
    assert [line.split()[0] for line in lines[1:]] == list(reversed(ids))
    assert lines[-1].split()[1] == "canceled"

    listing = cli.json("jobs", "list", "--group", group, "--asc", "--page-size", "2")
    assert listing["_count"] == 2
    assert [job["id"] for job in listing["jobs"]] == ids[:2]
    second = cli.json("jobs", "list", "--group", group, "--asc", "--page-size", "2", "--page", "2")
    assert [job["id"] for job in second["jobs"]] == ids[2:]
    pending = cli.json("jobs", "list", "--group", group, "--status", "pending")
    assert {job["id"] for job in pending["jobs"]} == set(ids[1:])


def test_get_shows_the_job(cli: Cli, group: str) -> None:
    job_id = cli.run(
        "jobs", "submit", "--command", "python", "--arg", "a.py", "--group", group
    ).stdout.strip()
    text = cli.run("jobs", "get", job_id).stdout
    fields = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
    assert text.splitlines()[0].split() == ["id", job_id]
    assert fields["status"].strip() == "pending"
    assert fields["command"].strip() == "python a.py"
    assert fields["group"].strip() == group


def test_cancel_and_attempts(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    with cli.client() as client:
        assert client.poll_work("m1", group) is not None
        client.report_interrupted(job_id, "m1", group)
        assert client.poll_work("m2", group) is not None

    lines = cli.run("jobs", "attempts", job_id).stdout.splitlines()
    header = ["ATTEMPT", "MACHINE", "STARTED", "ENDED", "OUTCOME", "EXIT", "CODE"]
    assert lines[0].split() == header
    ids = [str(a["id"]) for a in cli.json("jobs", "attempts", job_id)]
    assert [(line.split()[0], line.split()[1], line.split()[-2]) for line in lines[1:]] == [
        (ids[0], "m1", "interrupted"),
        (ids[1], "m2", "running"),
    ]
    assert cli.run("jobs", "cancel", job_id).stdout == "Job canceled\n"
    assert cli.json("jobs", "cancel", job_id) == {"message": "Job canceled"}
    attempts = cli.json("jobs", "attempts", job_id)
    assert [a["outcome"] for a in attempts] == ["interrupted", "canceled"]


def test_cancelling_a_completed_job_is_an_error(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    with cli.client() as client:
        assert client.poll_work("m1", group) is not None
        client.report_completed(job_id, "m1", group)
    result = cli.run("jobs", "cancel", job_id, code=1)
    assert result.stderr.startswith("error: ")


def test_purge_a_group(cli: Cli, group: str) -> None:
    for _ in range(2):
        cli.run("jobs", "submit", "--command", "x", "--group", group)
    assert cli.run("groups", "purge", group).stdout == f"purged 2 job(s) of {group}\n"
    assert cli.json("groups", "purge", group) == {"count": 0}


# -- users, keys, whoami ----------------------------------------------------------------------


def test_users_keys_and_whoami(admin: Cli) -> None:
    name = f"dora-{uuid.uuid4().hex[:8]}"
    user = admin.json("users", "create", name)
    assert user["username"] == name
    key = admin.json("keys", "create", user["id"], "--org", "acme", "--project", "p1")["token"]
    who = admin.json("whoami", key=key)
    assert (who["id"], who["username"], who["is_admin"]) == (user["id"], name, False)
    assert who["webhook_secret"]
    text = admin.run("whoami", key=key).stdout
    assert name in text and "admin  no" in text
    assert admin.run("users", "create", name, code=1).stderr.startswith("error: ")


def test_keys_are_listed_and_revoked_one_at_a_time(admin: Cli) -> None:
    user = admin.json("users", "create", f"kim-{uuid.uuid4().hex[:8]}")
    first = admin.run("keys", "create", user["id"], "--org", "acme", "--project", "p1").stdout
    second = admin.run("keys", "create", user["id"]).stdout.strip()
    listed = admin.json("keys", "list", user["id"])
    assert [(k["org_name"], k["revoked"]) for k in listed] == [("acme", False), (None, False)]
    table = admin.run("keys", "list", user["id"]).stdout
    assert listed[0]["id"] in table and "acme" in table
    assert first.strip() not in table and second not in table  # never the keys themselves

    revoked = admin.run("keys", "revoke", user["id"], listed[0]["id"]).stdout
    assert revoked == f"revoked key {listed[0]['id']}\n"

    admin.run("whoami", key=first.strip(), code=1)
    admin.run("whoami", key=second)
    assert [k["revoked"] for k in admin.json("keys", "list", user["id"])] == [True, False]
    # A user manages its own keys.
    own = Cli(admin.url, second, user["id"])
    assert [k["id"] for k in own.json("keys", "list", user["id"])] == [k["id"] for k in listed]
    proc = own.process("keys", "revoke", admin.user_id, str(uuid.uuid4()))
    assert_clean_error(proc, 1, "not found")


def test_a_user_cannot_use_admin_commands(cli: Cli) -> None:
    proc = cli.process("users", "create", "mallory")
    assert_clean_error(proc, 1, "error: ")


def test_delete_all_users_wants_confirmation(tmp_path: Path) -> None:
    # Its own server: deleting every user would pull the rug from other tests.
    own = start_server(f"sqlite:///{tmp_path / 'k.db'}", new_admin_key(), tmp_path / "logs")
    try:
        admin = Cli(own.url, own.admin_key, "")
        user_id = admin.run("users", "create", "erin").stdout.strip()
        key = admin.run("keys", "create", user_id).stdout.strip()
        aborted = admin.run("users", "delete-all", stdin="n\n", code=1)
        assert "Aborted" in aborted.output
        admin.run("whoami", key=key)
        assert admin.run("users", "delete-all", "--yes").stdout == "deleted every non-admin user\n"
        admin.run("whoami", key=key, code=1)
        assert admin.json("users", "delete-all", "--yes") == {
            "message": "deleted every non-admin user"
        }
    finally:
        own.stop()


# -- scaling rules ----------------------------------------------------------------------------


def test_scaling_rules(cli: Cli, group: str) -> None:
    rule = cli.json(
        "scaling-rules",
        "create",
        group,
        "--min-replicas",
        "0",
        "--max-replicas",
        "3",
        "--idle-threshold-seconds",
        "60",
    )
    assert (rule["container_group_id"], rule["max_replicas"]) == (group, 3)
    lines = cli.run("scaling-rules", "list").stdout.splitlines()
    assert lines[0].split() == ["GROUP", "MIN", "MAX", "IDLE", "S", "UPDATED"]
    assert lines[1].split()[:4] == [group, "0", "3", "60"]
    assert [r["container_group_id"] for r in cli.json("scaling-rules", "list")] == [group]
    assert "max replicas    3" in cli.run("scaling-rules", "get", group).stdout
    updated = cli.json("scaling-rules", "update", group, "--max-replicas", "5")
    assert (updated["min_replicas"], updated["max_replicas"]) == (0, 5)
    cli.run("scaling-rules", "update", group, code=2)
    assert (
        cli.run("scaling-rules", "delete", group).stdout == f"deleted the scaling rule of {group}\n"
    )
    assert cli.run("scaling-rules", "get", group, code=1).stderr.startswith("error: ")


# -- jobs watch -------------------------------------------------------------------------------


def watch(cli: Cli, job_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KELPIE, "jobs", "watch", job_id, "--interval", "0.2"],
        env={**os.environ, **cli.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_status(client: KelpieClient, job_id: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while client.get_job(job_id).status != status:
        assert time.monotonic() < deadline, f"job never became {status}"
        time.sleep(0.05)


def read_until(watcher: subprocess.Popen[str], text: str) -> list[str]:
    """The watcher's lines up to and including the first that contains `text`."""
    assert watcher.stdout is not None
    lines: list[str] = []
    while True:
        line = watcher.stdout.readline()
        assert line, f"watch ended before printing {text!r}; it printed {lines}"
        lines.append(line.rstrip("\n"))
        if text in line:
            return lines


def test_watch_prints_each_change_once_not_each_heartbeat(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    watcher = watch(cli, job_id)
    try:
        first = read_until(watcher, job_id)
        with cli.client() as client:
            assert client.poll_work("m1", group) is not None
            running = read_until(watcher, "running")
            for _ in range(10):
                assert client.heartbeat(job_id, "m1", group) == "running"
                time.sleep(0.1)  # beats spread over several of the watcher's refreshes
            client.report_completed(job_id, "m1", group)
        rest, stderr = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, stderr
    assert first[0].startswith(f"{job_id}  pending")
    assert "  claimed  " in running[-2]
    assert running[-1].startswith(f"{job_id}  running  machine m1  attempts 1  failures 0/3")
    # ten heartbeats changed nothing worth a line: the next lines are the completion
    lines = rest.splitlines()
    assert len(lines) == 2, lines
    assert "  completed  " in lines[0]
    assert lines[-1].startswith(f"{job_id}  completed  machine m1  attempts 1")


def test_watch_exits_1_when_the_job_fails(cli: Cli, group: str) -> None:
    job_id = cli.run(
        "jobs", "submit", "--command", "x", "--group", group, "--max-failures", "1"
    ).stdout.strip()
    watcher = watch(cli, job_id)
    try:
        with cli.client() as client:
            assert client.poll_work("m1", group) is not None
            client.report_failed(job_id, "m1", group, exit_code=7, error="boom")
        stdout, _ = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 1
    assert " failed " in stdout.splitlines()[-1]


def test_watch_exits_3_when_the_job_is_canceled(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    watcher = watch(cli, job_id)
    try:
        read_until(watcher, f"{job_id}  pending")
        cli.run("jobs", "cancel", job_id)
        watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 3


def test_watch_of_an_ended_job_prints_it_as_json(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    cli.run("jobs", "cancel", job_id)
    result = cli.run("jobs", "watch", job_id, "--json", code=3)
    assert json.loads(result.stdout)["status"] == "canceled"


def test_watch_of_an_unknown_job_exits_4(cli: Cli) -> None:
    job_id = str(uuid.uuid4())
    proc = cli.process("jobs", "watch", job_id)
    assert_clean_error(proc, 4, f"Job {job_id} not found")


# -- errors, as real processes ----------------------------------------------------------------


def test_an_unknown_job_id_is_a_clean_error_naming_it(cli: Cli) -> None:
    for command in (["jobs", "get"], ["jobs", "cancel"], ["jobs", "attempts"]):
        job_id = str(uuid.uuid4())
        assert_clean_error(cli.process(*command, job_id), 1, f"Job {job_id} not found")


def test_a_bad_key_is_a_clean_error(cli: Cli) -> None:
    assert_clean_error(cli.process("jobs", "list", key="wrong-key"), 1, "error: ")
    assert_clean_error(cli.process("whoami", key="wrong-key"), 1, "error: ")


def test_an_unreachable_api_is_a_clean_error(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = cli.process("jobs", "list", url=url)
    assert_clean_error(proc, 1, f"error: cannot reach the kelpie API at {url}: ")
    proc = cli.process("jobs", "watch", str(uuid.uuid4()), url=url)
    assert_clean_error(proc, 5, "cannot reach the kelpie API")


def test_usage_errors_exit_2_without_a_traceback(cli: Cli, tmp_path: Path) -> None:
    no_key = cli.process("jobs", "list", key="")
    assert no_key.returncode == 2
    assert "no API key: pass --api-key or set KELPIE_API_KEY" in no_key.stderr
    bad_file = tmp_path / "job.yaml"
    bad_file.write_text("command: [unclosed\n")
    for proc in (
        cli.process("jobs", "submit", str(bad_file)),
        cli.process("jobs", "submit", "--command", "x", "--input", "bucket/prefix"),
        cli.process("jobs", "list", "--status", "sleeping"),
    ):
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "Error: " in proc.stderr


# -- scheduling and goodput -------------------------------------------------------------------


def test_submit_with_scheduling_flags_and_list_by_them(cli: Cli, group: str) -> None:
    job = cli.json(
        "jobs",
        "submit",
        "--command",
        "python",
        "--group",
        group,
        "--name",
        "resnet",
        "--label",
        "team=vision",
        "--label",
        "stage=a=b",
        "--max-duration",
        "2h",
        "--max-interruptions",
        "3",
        "--fail-exit-code",
        "2",
        "--interruption-exit-code",
        "143",
    )
    assert job["name"] == "resnet"
    assert job["labels"] == {"team": "vision", "stage": "a=b"}
    assert (job["max_duration"], job["max_interruptions"]) == (7200, 3)
    assert job["retry"] == {"fail_exit_codes": [2], "interruption_exit_codes": [143]}
    other = cli.run("jobs", "submit", "--command", "x", "--group", group, "--label", "team=audio")

    listed = cli.json("jobs", "list", "--group", group, "--label", "team=vision")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert cli.json("jobs", "list", "--group", group, "--name", "resnet")["_count"] == 1
    table = cli.run("jobs", "list", "--group", group, "--label", "team=audio").stdout
    assert other.stdout.strip() in table and job["id"] not in table
    shown = cli.run("jobs", "get", job["id"]).stdout
    for line in ("resnet", "team=vision", "0 of at most 3", "7200 s per attempt", "143"):
        assert line in shown


def test_submit_with_an_idempotency_key_queues_the_job_once(cli: Cli, group: str) -> None:
    args = ["jobs", "submit", "--command", "x", "--group", group, "--idempotency-key", "k-1"]
    first = cli.run(*args).stdout.strip()
    again = cli.run(*args).stdout.strip()
    assert again == first
    assert cli.json("jobs", "list", "--group", group)["_count"] == 1
    proc = cli.process(*args[:-2], "--name", "other", "--idempotency-key", "k-1")
    assert_clean_error(proc, 1, "Idempotency-Key")


def test_goodput_of_a_job_and_the_group_report(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    with cli.client() as client:
        first = client.poll_work("m1", group)
        assert first is not None
        client.report_interrupted(job_id, "m1", group)
        second = client.poll_work("m2", group)
        assert second is not None
        client.report_completed(job_id, "m2", group)

    ledger = cli.json("jobs", "goodput", job_id)
    assert [a["outcome"] for a in ledger["attempts"]] == ["interrupted", "completed"]
    table = cli.run("jobs", "goodput", job_id).stdout
    assert "interrupted" in table and "completed" in table and "goodput" in table

    report = cli.json("report", "--group", group, "--window", "1h")
    assert (report["attempts"], report["interruptions"]) == (2, 1)
    text = cli.run("report", "--group", group).stdout
    assert "interruptions per hour" in text and "Young/Daly" in text
    assert_clean_error(cli.process("report", "--group", "no-such-group"), 1, "not found")


# -- why a job waits, and the machines seen ---------------------------------------------------


def test_jobs_get_says_why_a_pending_job_waits(cli: Cli, group: str) -> None:
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()

    shown = cli.run("jobs", "get", job_id).stdout

    assert re.search(rf"^waiting because +no worker of container group '{group}'", shown, re.M)
    assert cli.json("jobs", "get", job_id)["pending_reason"]["reason"] == "no_workers"
    with cli.client() as client:
        assert client.poll_work("m1", group) is not None
    assert "waiting because" not in cli.run("jobs", "get", job_id).stdout


def test_workers_lists_the_machines_seen_in_a_group(cli: Cli, group: str) -> None:
    assert cli.run("workers", "--group", group).stdout == ""
    job_id = cli.run("jobs", "submit", "--command", "x", "--group", group).stdout.strip()
    with cli.client() as client:
        assert client.poll_work("m1", group) is not None

    [header, row] = cli.run("workers", "--group", group).stdout.splitlines()

    assert header.split()[:2] == ["MACHINE", "GROUP"]
    assert row.split()[:2] == ["m1", group]
    assert job_id in row.split()
    [listed] = cli.json("workers", "--group", group)
    assert (listed["machine_id"], listed["current_job_id"]) == ("m1", job_id)
    assert listed["version"] is not None  # the SDK says which kelpie it is
