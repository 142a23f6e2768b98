"""Talking to a real `kelpie serve` over HTTP in tests, as users and as workers."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.processes import ServerProcess


def new_admin_key() -> str:
    """A fresh `KELPIE_ADMIN_KEY`, long enough for `kelpie serve` to accept it."""
    return f"admin-{secrets.token_hex(16)}"


@dataclass
class ApiUser:
    id: str
    key: str
    http: httpx.Client

    def submit(self, **fields: Any) -> dict[str, Any]:
        body = {"command": "python", "container_group_id": "group-a", **fields}
        response = self.http.post("/jobs", json=body)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    def claim(
        self, machine_id: str, group: str = "group-a", wait: float = 0
    ) -> dict[str, Any] | None:
        response = self.http.get(
            "/work", params={"machine_id": machine_id, "container_group_id": group, "wait": wait}
        )
        assert response.status_code == 200, response.text
        jobs: list[dict[str, Any]] = response.json()
        return jobs[0] if jobs else None

    def report(
        self, job_id: str, what: str, machine_id: str, group: str = "group-a", **extra: Any
    ) -> httpx.Response:
        body = {"machine_id": machine_id, "container_group_id": group, **extra}
        return self.http.post(f"/jobs/{job_id}/{what}", json=body)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job


@dataclass
class Api:
    """One running server and its admin, with helpers to make users."""

    server: ServerProcess
    backend: str
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, key: str | None) -> httpx.Client:
        """A client for this server, closed with the Api at the end of the session."""
        headers = {"X-Kelpie-Key": key} if key is not None else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def admin(self) -> ApiUser:
        http = self.http(self.server.admin_key)
        me = http.get("/users/me").json()
        return ApiUser(me["id"], self.server.admin_key, http)

    def new_user(self, org_name: str | None = None, project_name: str | None = None) -> ApiUser:
        admin = self.http(self.server.admin_key)
        created = admin.post("/users", json={"username": f"user-{uuid.uuid4().hex[:12]}"})
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        body = {k: v for k, v in (("org_name", org_name), ("project_name", project_name)) if v}
        token = admin.post(f"/users/{user_id}/token", json=body)
        assert token.status_code == 201, token.text
        key = token.json()["token"]
        return ApiUser(user_id, key, self.http(key))
