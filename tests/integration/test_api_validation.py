"""Bad input gets a clear 400 naming the field, and changes nothing (PROTOCOL §3)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.api import ApiUser

GOOD: dict[str, Any] = {"command": "python", "container_group_id": "validation-group"}
ENTRY = {"bucket": "b", "prefix": "p/", "local_path": "/input", "direction": "download"}
UP = {**ENTRY, "direction": "upload", "local_path": "/output"}
LONG_UP = {**UP, "local_path": "/output/" + "d" * 4000}

BAD_SUBMISSIONS: list[tuple[str, Any, str]] = [
    ("missing command", {"container_group_id": "g"}, "command"),
    ("empty command", {**GOOD, "command": ""}, "command"),
    ("missing group", {"command": "x"}, "container_group_id"),
    ("empty group", {**GOOD, "container_group_id": ""}, "container_group_id"),
    ("command not a string", {**GOOD, "command": 5}, "command"),
    ("arguments not a list", {**GOOD, "arguments": "a b"}, "arguments"),
    ("argument not a string", {**GOOD, "arguments": ["a", 1]}, "arguments[1]"),
    ("environment not an object", {**GOOD, "environment": ["A=1"]}, "environment"),
    ("environment value not a string", {**GOOD, "environment": {"A": 1}}, "environment.A"),
    ("environment bad name", {**GOOD, "environment": {"1A": "x"}}, "environment"),
    ("unknown field", {**GOOD, "colour": "red"}, "colour"),
    ("max_failures zero", {**GOOD, "max_failures": 0}, "max_failures"),
    ("max_failures as string", {**GOOD, "max_failures": "3"}, "max_failures"),
    ("max_failures a float", {**GOOD, "max_failures": 2.5}, "max_failures"),
    ("heartbeat_interval zero", {**GOOD, "heartbeat_interval": 0}, "heartbeat_interval"),
    ("heartbeat_interval huge", {**GOOD, "heartbeat_interval": 10**9}, "heartbeat_interval"),
    ("compression not bool", {**GOOD, "compression": "yes"}, "compression"),
    ("priority above the bound", {**GOOD, "priority": 1001}, "priority"),
    ("priority below the bound", {**GOOD, "priority": -1001}, "priority"),
    ("priority as string", {**GOOD, "priority": "5"}, "priority"),
    ("priority a float", {**GOOD, "priority": 1.5}, "priority"),
    ("priority a boolean", {**GOOD, "priority": True}, "priority"),
    ("priority null", {**GOOD, "priority": None}, "priority"),
    ("webhook not http", {**GOOD, "webhook": "ftp://x.example/hook"}, "webhook"),
    ("webhook not a url", {**GOOD, "webhook": "not a url"}, "webhook"),
    ("half legacy pair", {**GOOD, "input_bucket": "b"}, "input_prefix"),
    ("other half legacy pair", {**GOOD, "output_prefix": "p/"}, "output_bucket"),
    (
        "sync with legacy",
        {**GOOD, "sync": {"before": [ENTRY]}, "input_bucket": "b", "input_prefix": "p"},
        "sync",
    ),
    ("before must download", {**GOOD, "sync": {"before": [UP]}}, "before[0].direction"),
    ("during must upload", {**GOOD, "sync": {"during": [ENTRY]}}, "during[0].direction"),
    ("after must upload", {**GOOD, "sync": {"after": [ENTRY]}}, "after[0].direction"),
    (
        "bad direction",
        {**GOOD, "sync": {"before": [{**ENTRY, "direction": "sideways"}]}},
        "direction",
    ),
    ("bad pattern", {**GOOD, "sync": {"during": [{**UP, "pattern": "(["}]}}, "pattern"),
    ("sync entry unknown field", {**GOOD, "sync": {"before": [{**ENTRY, "x": 1}]}}, "x"),
    ("sync unknown phase", {**GOOD, "sync": {"sometimes": []}}, "sometimes"),
    ("sync entry no bucket", {**GOOD, "sync": {"before": [{**ENTRY, "bucket": ""}]}}, "bucket"),
    ("NUL in an argument", {**GOOD, "arguments": ["ok", "bad\x00"]}, "arguments[1]"),
    ("NUL in an environment value", {**GOOD, "environment": {"A": "\x00"}}, "environment"),
    ("NUL in the command", {**GOOD, "command": "py\x00thon"}, "command"),
    ("NUL in a sync path", {**GOOD, "sync": {"before": [{**ENTRY, "prefix": "p\x00"}]}}, "prefix"),
    (
        "too many environment variables",
        {**GOOD, "environment": {f"V{i}": "x" for i in range(129)}},
        "environment",
    ),
    ("environment too large", {**GOOD, "environment": {"BLOB": "x" * 33_000}}, "environment"),
    ("too many arguments", {**GOOD, "arguments": ["a"] * 1001}, "arguments"),
    ("arguments too large", {**GOOD, "arguments": ["x" * 17_000] * 2}, "arguments"),
    ("argument too long", {**GOOD, "arguments": ["x" * 40_000]}, "arguments[0]"),
    ("command too long", {**GOOD, "command": "x" * 5000}, "command"),
    ("too many sync entries", {**GOOD, "sync": {"during": [UP] * 33}}, "sync.during"),
    ("pattern too long", {**GOOD, "sync": {"during": [{**UP, "pattern": "a" * 1025}]}}, "pattern"),
    (
        "job too large",
        {**GOOD, "sync": {"during": [LONG_UP] * 20, "after": [LONG_UP] * 20}},
        "the job takes",
    ),
    ("body is a list", [GOOD], "body"),
    ("body is a string", "python", "body"),
    # scheduling fields
    ("empty name", {**GOOD, "name": ""}, "name"),
    ("name too long", {**GOOD, "name": "n" * 256}, "name"),
    ("name not a string", {**GOOD, "name": 7}, "name"),
    ("labels not an object", {**GOOD, "labels": ["team=ml"]}, "labels"),
    ("label value not a string", {**GOOD, "labels": {"team": 1}}, "labels.team"),
    ("label key with =", {**GOOD, "labels": {"a=b": "c"}}, "labels"),
    ("label key with a space", {**GOOD, "labels": {"my team": "ml"}}, "labels"),
    ("label key too long", {**GOOD, "labels": {"k" * 64: "v"}}, "labels"),
    ("label value too long", {**GOOD, "labels": {"k": "v" * 256}}, "labels"),
    ("too many labels", {**GOOD, "labels": {f"k{i}": "v" for i in range(33)}}, "labels"),
    ("max_duration zero", {**GOOD, "max_duration": 0}, "max_duration"),
    ("max_duration beyond a year", {**GOOD, "max_duration": 10**9}, "max_duration"),
    ("max_duration as string", {**GOOD, "max_duration": "3600"}, "max_duration"),
    ("max_interruptions negative", {**GOOD, "max_interruptions": -1}, "max_interruptions"),
    ("max_interruptions a float", {**GOOD, "max_interruptions": 1.5}, "max_interruptions"),
    ("retry not an object", {**GOOD, "retry": [143]}, "retry"),
    ("retry unknown field", {**GOOD, "retry": {"on_exit": [1]}}, "retry.on_exit"),
    ("retry exit code 0", {**GOOD, "retry": {"fail_exit_codes": [0]}}, "fail_exit_codes[0]"),
    (
        "retry exit code 256",
        {**GOOD, "retry": {"interruption_exit_codes": [256]}},
        "interruption_exit_codes[0]",
    ),
    (
        "retry exit code as string",
        {**GOOD, "retry": {"fail_exit_codes": ["2"]}},
        "fail_exit_codes[0]",
    ),
    (
        "retry code in both rules",
        {**GOOD, "retry": {"fail_exit_codes": [1, 143], "interruption_exit_codes": [143]}},
        "exit code 143 is in both",
    ),
    (
        "too many retry codes",
        {**GOOD, "retry": {"fail_exit_codes": list(range(1, 66))}},
        "fail_exit_codes",
    ),
]


def _count(user: ApiUser) -> int:
    body: dict[str, Any] = user.http.get("/jobs", params={"page_size": 1000}).json()
    return int(body["_count"])


@pytest.mark.parametrize(
    ("body", "field"),
    [(b, f) for _, b, f in BAD_SUBMISSIONS],
    ids=[n for n, _, _ in BAD_SUBMISSIONS],
)
def test_bad_submission_is_rejected_naming_the_field(user: ApiUser, body: Any, field: str) -> None:
    before = _count(user)

    response = user.http.post("/jobs", json=body)

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "Invalid request"
    assert field in error["message"]
    assert _count(user) == before


def test_malformed_json_is_rejected(user: ApiUser) -> None:
    response = user.http.post(
        "/jobs", content=b'{"command": "x",', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"] == "Invalid request"
    assert "JSON" in response.json()["message"]


@pytest.mark.parametrize("size", [0, 1001])
def test_batch_size_is_bounded(user: ApiUser, size: int) -> None:
    before = _count(user)
    response = user.http.post("/jobs/batch", json=[GOOD] * size)

    assert response.status_code == 400
    assert response.json()["error"] == "Invalid request"
    assert _count(user) == before


def test_one_bad_item_rejects_the_whole_batch_naming_its_index(user: ApiUser) -> None:
    before = _count(user)
    items = [GOOD, GOOD, {**GOOD, "max_failures": 0}, GOOD]

    response = user.http.post("/jobs/batch", json=items)

    assert response.status_code == 400
    assert response.json()["index"] == 2
    assert "max_failures" in response.json()["message"]
    assert _count(user) == before


@pytest.mark.parametrize(
    "params",
    [
        {"status": "sleeping"},
        {"page_size": 0},
        {"page_size": 1001},
        {"page": 0},
        {"page": "first"},
        {"asc": "sideways"},
        {"name": ""},
        {"label": "team"},
        {"label": "=ml"},
        {"label": "bad key=ml"},
        {"label": ["a=1"] * 17},
    ],
)
def test_bad_list_parameters_are_rejected(user: ApiUser, params: dict[str, Any]) -> None:
    response = user.http.get("/jobs", params=params)

    assert response.status_code == 400
    assert next(iter(params)) in response.json()["message"]


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "x" * 300])
@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/attempts"),
        ("POST", "/heartbeat"),
        ("POST", "/completed"),
        ("POST", "/failed"),
        ("POST", "/interrupted"),
    ],
)
def test_bad_job_ids_are_rejected(user: ApiUser, bad_id: str, method: str, suffix: str) -> None:
    body = {"machine_id": "m", "container_group_id": "g"} if method == "POST" else None
    response = user.http.request(method, f"/jobs/{bad_id}{suffix}", json=body)

    assert response.status_code == 400
    assert "job_id" in response.json()["message"]


@pytest.mark.parametrize("exit_code", ["three", 2**31, -(2**31) - 1, 1.5])
def test_failure_report_with_bad_exit_code_changes_nothing(
    user: ApiUser, group: str, exit_code: object
) -> None:
    job = user.submit(container_group_id=group)
    user.claim("m1", group)

    response = user.report(job["id"], "failed", "m1", group, exit_code=exit_code)

    assert response.status_code == 400
    assert "exit_code" in response.json()["message"]
    assert user.job(job["id"])["status"] == "running"
    assert user.job(job["id"])["num_failures"] == 0


def test_unknown_route_uses_the_error_shape(user: ApiUser) -> None:
    response = user.http.get(f"/nothing-here/{uuid.uuid4()}")

    assert response.status_code == 404
    assert set(response.json()) == {"error", "message"}


@pytest.mark.parametrize("what", ["heartbeat", "completed", "failed", "interrupted"])
def test_nul_byte_in_a_worker_report_is_rejected(user: ApiUser, group: str, what: str) -> None:
    job = user.submit(container_group_id=group)
    user.claim("m1", group)

    response = user.report(job["id"], what, "m1\x00;", group)

    assert response.status_code == 400
    assert "machine_id" in response.json()["message"]
    assert user.job(job["id"])["status"] == "running"


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/work", {"machine_id": "m\x00", "container_group_id": "g"}),
        ("GET", "/work", {"machine_id": "m", "container_group_id": "g\x00"}),
        ("GET", "/jobs", {"container_group_id": "g\x00"}),
        ("DELETE", "/jobs/container-groups/g%00", {}),
        ("GET", "/scaling-rules/g%00", {}),
    ],
)
def test_nul_byte_in_a_parameter_is_rejected(
    user: ApiUser, method: str, path: str, params: dict[str, str]
) -> None:
    response = user.http.request(method, path, params=params)

    assert response.status_code == 400
    assert response.json()["error"] == "Invalid request"
