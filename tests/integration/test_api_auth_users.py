"""Keys, users and admin powers (PROTOCOL §2)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.api import Api


def test_health_and_docs_need_no_key(api: Api) -> None:
    anonymous = api.http(None)
    assert anonymous.get("/health").json()["status"] == "ok"
    assert anonymous.get("/openapi.json").status_code == 200
    assert anonymous.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", "/work"),
        ("GET", "/users/me"),
        ("GET", "/scaling-rules"),
        ("DELETE", "/jobs"),
    ],
)
def test_missing_key_is_401_and_unknown_key_is_403(api: Api, method: str, path: str) -> None:
    missing = api.http(None).request(method, path)
    assert missing.status_code == 401
    assert missing.json() == {"error": "Unauthorized", "message": "missing X-Kelpie-Key header"}

    unknown = api.http("kelpie_not-a-real-key").request(method, path)
    assert unknown.status_code == 403
    assert unknown.json()["error"] == "Forbidden"


def test_admin_creates_user_and_key_that_works(api: Api) -> None:
    admin = api.admin()
    name = f"ada-{uuid.uuid4().hex[:8]}"

    created = admin.http.post("/users", json={"username": name})
    assert created.status_code == 201
    user = created.json()
    assert set(user) == {"id", "username", "created"}
    assert user["username"] == name

    token = admin.http.post(f"/users/{user['id']}/token", json={"org_name": "o"})
    assert token.status_code == 201
    me = api.http(token.json()["token"]).get("/users/me").json()
    assert me["id"] == user["id"]
    assert me["is_admin"] is False
    assert me["webhook_secret"].startswith("whsec_")
    assert me["webhook_token"]


def test_taken_username_is_409(api: Api) -> None:
    admin = api.admin()
    name = f"bob-{uuid.uuid4().hex[:8]}"
    assert admin.http.post("/users", json={"username": name}).status_code == 201

    again = admin.http.post("/users", json={"username": name})

    assert again.status_code == 409
    assert again.json()["error"] == "Conflict"


def test_token_for_unknown_user_is_404(api: Api) -> None:
    response = api.admin().http.post(f"/users/{uuid.uuid4()}/token", json={})
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/users", {"username": "x"}),
        ("DELETE", "/users", None),
        ("POST", "/users/5f0c6a3e-2d1b-4c8e-9a7f-3b2e1d0c9f8a/token", {}),
        ("DELETE", "/jobs", None),
        ("DELETE", "/scaling-rules", None),
    ],
)
def test_admin_endpoints_refuse_ordinary_users(
    api: Api, method: str, path: str, body: object
) -> None:
    user = api.new_user()
    assert user.http.request(method, path, json=body).status_code == 403


def test_bad_user_bodies_are_400(api: Api) -> None:
    admin = api.admin()
    for body in (
        {},
        {"username": ""},
        {"username": "has space"},
        {"username": 5},
        {"username": "ok", "extra": 1},
    ):
        response = admin.http.post("/users", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"] == "Invalid request"


def test_keys_are_never_stored_in_plaintext(api: Api) -> None:
    user = api.new_user()
    if api.backend == "sqlite":
        import sqlite3

        path = api.server.database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            dump = "\n".join(db.iterdump())
    else:
        import subprocess

        dump = subprocess.run(
            ["pg_dump", "--data-only", api.server.database_url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    assert user.key not in dump
    assert api.server.admin_key not in dump


def test_deleting_users_revokes_their_keys_and_keeps_admin(api: Api) -> None:
    user = api.new_user()
    assert user.http.get("/users/me").status_code == 200

    assert api.admin().http.delete("/users").status_code == 204

    assert user.http.get("/users/me").status_code == 403
    assert api.admin().http.get("/users/me").json()["is_admin"] is True


def test_openapi_lists_stable_operation_ids(api: Api) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    operation_ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {
        "submit_job",
        "submit_jobs_batch",
        "get_job",
        "list_jobs",
        "cancel_job",
        "claim_work",
        "heartbeat_job",
        "report_job_completed",
        "report_job_failed",
        "report_job_interrupted",
        "list_job_attempts",
        "purge_container_group",
        "create_user",
        "create_token",
        "get_me",
    } <= operation_ids
