"""Keys, users and admin powers (PROTOCOL §2)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.api_fixtures import BACKENDS
from tests.support.processes import start_server


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
        "list_tokens",
        "revoke_token",
        "get_me",
    } <= operation_ids


# -- one key at a time ----------------------------------------------------------------------


def _second_key(api: Api, user: ApiUser, **body: str) -> tuple[str, str]:
    """Another key for the user: (key, its id)."""
    created = api.admin().http.post(f"/users/{user.id}/token", json=body)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert set(answer) == {"token", "id"}
    return answer["token"], answer["id"]


def test_keys_are_listed_by_id_and_revoked_one_at_a_time(api: Api) -> None:
    user = api.new_user()
    key, key_id = _second_key(api, user, org_name="acme", project_name="render")
    admin = api.admin().http
    assert api.http(key).get("/users/me").status_code == 200  # resolved, and so cached

    listed = admin.get(f"/users/{user.id}/tokens")
    assert listed.status_code == 200
    assert user.key not in listed.text and key not in listed.text
    tokens = listed.json()["tokens"]
    assert listed.json()["_count"] == len(tokens) == 2
    assert tokens[1] == {
        "id": key_id,
        "created": tokens[1]["created"],
        "org_name": "acme",
        "project_name": "render",
        "revoked": False,
        "bootstrap": False,
    }

    assert admin.delete(f"/users/{user.id}/tokens/{key_id}").status_code == 204

    # At once in this process: the key cache does not keep it alive.
    assert api.http(key).get("/users/me").status_code == 403
    assert user.http.get("/users/me").status_code == 200
    assert admin.delete(f"/users/{user.id}/tokens/{key_id}").status_code == 204  # a no-op
    assert [t["revoked"] for t in admin.get(f"/users/{user.id}/tokens").json()["tokens"]] == [
        False,
        True,
    ]


def test_unknown_keys_and_users_are_404(api: Api) -> None:
    admin = api.admin().http
    user = api.new_user()

    assert admin.delete(f"/users/{user.id}/tokens/{uuid.uuid4()}").status_code == 404
    assert admin.get(f"/users/{uuid.uuid4()}/tokens").status_code == 404
    assert admin.delete(f"/users/{user.id}/tokens/not-a-uuid").status_code == 400


def test_a_user_manages_its_own_keys_and_no_one_elses(api: Api) -> None:
    user, other = api.new_user(), api.new_user()
    key, key_id = _second_key(api, user)
    _, other_key_id = _second_key(api, other)

    assert user.http.get(f"/users/{user.id}/tokens").json()["_count"] == 2
    assert user.http.get(f"/users/{other.id}/tokens").status_code == 404
    assert user.http.delete(f"/users/{other.id}/tokens/{other_key_id}").status_code == 404
    assert user.http.delete(f"/users/{user.id}/tokens/{key_id}").status_code == 204

    assert api.http(key).get("/users/me").status_code == 403
    assert other.http.get("/users/me").status_code == 200
    assert [
        t["revoked"] for t in api.admin().http.get(f"/users/{other.id}/tokens").json()["tokens"]
    ] == [False, False]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_admin_key_at_start_revokes_the_previous_one(
    backend: str, fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    database = fresh_database_url(backend)
    old_key, new_key = new_admin_key(), new_admin_key()
    server = start_server(database, old_key, tmp_path / "logs")
    try:
        with httpx.Client(base_url=server.url, headers={"X-Kelpie-Key": old_key}) as old:
            minted = old.post(f"/users/{old.get('/users/me').json()['id']}/token", json={})
            assert minted.status_code == 201
    finally:
        server.stop()

    restarted = start_server(database, new_key, tmp_path / "logs")
    try:
        for key, status in ((old_key, 403), (new_key, 200), (minted.json()["token"], 200)):
            with httpx.Client(base_url=restarted.url, headers={"X-Kelpie-Key": key}) as http:
                assert http.get("/users/me").status_code == status
    finally:
        restarted.stop()


def test_a_short_admin_key_is_refused_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kelpie", "serve", "--port", "1"],
        env={"KELPIE_ADMIN_KEY": "change-me", "KELPIE_DATABASE_URL": f"sqlite:///{tmp_path}/k.db"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "KELPIE_ADMIN_KEY" in proc.stderr and "32" in proc.stderr
    assert not (tmp_path / "k.db").exists()
