"""A fake SaladCloud public API: a real HTTP server with in-memory container groups.

Speaks the paths kelpie's `SaladFleetProvider` uses, checks the `Salad-Api-Key` header,
records every request and can be told to misbehave. Use it as a context manager::

    with FakeSalad(api_key="k") as salad:
        salad.add_group("acme", "prod", "3f2a...", "render", status="stopped")
        provider = SaladFleetProvider("k", salad.url, backoff_base=0.001)
        ...
        assert salad.group("3f2a...").status == "running"
        assert salad.requests_to("/start")[0].header("Salad-Api-Key") == "k"

Fault injection (consumed in order by the next requests, whatever their path)::

    salad.fail_next(2, 429, retry_after=0)   # two throttled answers with `Retry-After: 0`
    salad.fail_next(1, 500)                  # then one server error
    salad.stall_next(1, 1.0)                 # then one answer that takes a second
    salad.remove_group("3f2a...")            # the group is gone: 404 from now on

`FakeHttpServer` is the reusable base (threaded server, request log, faults); `FakeImds`
in `fake_imds.py` builds on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

logger = logging.getLogger("tests.support.fake_http")

MERGE_PATCH_JSON = "application/merge-patch+json"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it. Header names are lower-cased."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    raw_body: bytes
    body: Any  # the parsed JSON body, or None when empty or not JSON

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def content_type(self) -> str | None:
        value = self.header("Content-Type")
        return value.split(";")[0].strip() if value else None


@dataclass(frozen=True)
class Reply:
    """What a fake answers: a status, an optional JSON body and extra headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def problem(status: int, title: str, detail: str | None = None) -> Reply:
    """An RFC 7807 problem reply, the error shape of SaladCloud's APIs."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    return Reply(status, body, content_type="application/problem+json")


@dataclass(frozen=True)
class _Fault:
    status: int | None  # None: no error, only the stall
    retry_after: str | None
    stall_seconds: float


class FakeHttpServer:
    """Base of the fakes: a real HTTP/1.0 server on 127.0.0.1 (ephemeral port) in a daemon
    thread, a thread-safe log of every request, and injected faults.

    Subclasses implement `handle(request) -> Reply` and take `self.lock` around their state.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._faults: deque[_Fault] = deque()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._closing.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._closing.set()  # wakes stalled handlers so closing does not wait for them
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # request log ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self.lock:
            return list(self._requests)

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        """Requests whose path ends with `path_suffix` (and of `method`, when given)."""
        return [
            request
            for request in self.requests
            if request.path.endswith(path_suffix)
            and (method is None or request.method == method.upper())
        ]

    def clear_requests(self) -> None:
        with self.lock:
            self._requests.clear()

    # fault injection -----------------------------------------------------------------------

    def fail_next(self, n: int, status: int, retry_after: float | str | None = None) -> None:
        """Answer the next `n` requests with `status` (and `Retry-After`, when given)."""
        after = None if retry_after is None else _format_retry_after(retry_after)
        with self.lock:
            self._faults.extend(_Fault(status, after, 0.0) for _ in range(n))

    def stall_next(self, n: int, seconds: float) -> None:
        """Make the next `n` requests wait `seconds` before being served normally."""
        with self.lock:
            self._faults.extend(_Fault(None, None, seconds) for _ in range(n))

    # subclass hook -------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    def _respond(self, request: RecordedRequest) -> Reply:
        with self.lock:
            self._requests.append(request)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            if fault.stall_seconds:
                self._closing.wait(fault.stall_seconds)
            if fault.status is not None:
                reply = problem(fault.status, "Injected fault", "fail_next() said so")
                if fault.retry_after is not None:
                    reply = dataclasses.replace(reply, headers={"Retry-After": fault.retry_after})
                return reply
        return self.handle(request)


def _format_retry_after(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _handler_for(fake: FakeHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            request = RecordedRequest(
                method=self.command,
                path=path,
                query=query,
                headers={name.lower(): value for name, value in self.headers.items()},
                raw_body=raw,
                body=_parse_json(raw),
            )
            self._send(fake._respond(request))

        def _send(self, reply: Reply) -> None:
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = serve

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s: " + format, type(fake).__name__, *args)

    return Handler


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# SaladCloud


@dataclass
class FakeGroup:
    """A container group held by `FakeSalad`. Read copies through `FakeSalad.group(id)`."""

    org: str
    project: str
    id: str
    name: str
    status: str = "stopped"
    replicas: int = 0
    version: int = 1
    reallocated_machines: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The group as the public API shows it (the fields kelpie reads, and some more)."""
        return {
            "id": self.id,
            "name": self.name,
            "display_name": self.name,
            "replicas": self.replicas,
            "current_state": {
                "status": self.status,
                "description": None,
                "start_time": "2024-01-01T00:00:00Z",
                "finish_time": "2024-01-01T00:00:00Z",
                "instance_status_counts": {
                    "allocating_count": 0,
                    "creating_count": 0,
                    "running_count": self.replicas if self.status == "running" else 0,
                    "stopping_count": 0,
                },
            },
            "autostart_policy": False,
            "restart_policy": "always",
            "create_time": "2024-01-01T00:00:00Z",
            "update_time": "2024-01-01T00:00:00Z",
            "pending_change": False,
            "version": self.version,
        }


_SEGMENT = r"([^/]+)"
_PROJECT = rf"/organizations/{_SEGMENT}/projects/{_SEGMENT}/containers"
_LIST_ROUTE = re.compile(rf"{_PROJECT}/?")
_GROUP_ROUTE = re.compile(rf"{_PROJECT}/{_SEGMENT}")
_ACTION_ROUTE = re.compile(rf"{_PROJECT}/{_SEGMENT}/(start|stop)")
_REALLOCATE_ROUTE = re.compile(rf"{_PROJECT}/{_SEGMENT}/instances/{_SEGMENT}/reallocate")


class FakeSalad(FakeHttpServer):
    """The SaladCloud public API, in memory. Point a client at `url` (it ends in /api/public,
    like the real base URL). A missing or wrong `Salad-Api-Key` gets 401.

    State changes: start -> "running", stop -> "stopped", PATCH (merge-patch+json only, else
    415) sets `replicas` (0-500, else 400), reallocate records the machine id on the group
    (any machine id is accepted). Unknown org, project, group or path: 404.
    """

    BASE_PATH = "/api/public"

    def __init__(self, api_key: str = "salad-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self._groups: dict[str, FakeGroup] = {}

    @property
    def url(self) -> str:
        """The base URL to give `SaladFleetProvider`."""
        return f"{self.root_url}{self.BASE_PATH}"

    def add_group(
        self,
        org: str,
        project: str,
        id: str,
        name: str,
        status: str = "stopped",
        replicas: int = 0,
    ) -> FakeGroup:
        """Create (or replace) a container group; returns a copy of it."""
        with self.lock:
            self._groups[id] = FakeGroup(org, project, id, name, status, replicas)
            return self.group(id)

    def update_group(
        self, id: str, *, status: str | None = None, replicas: int | None = None
    ) -> None:
        """Change a group behind the client's back (say, `status="deploying"`)."""
        with self.lock:
            group = self._groups[id]
            if status is not None:
                group.status = status
            if replicas is not None:
                group.replicas = replicas

    def remove_group(self, id: str) -> None:
        """The group is gone: it leaves the list and its paths answer 404."""
        with self.lock:
            self._groups.pop(id, None)

    def group(self, id: str) -> FakeGroup:
        """A copy of the group's current state (KeyError when there is none)."""
        with self.lock:
            group = self._groups[id]
            return dataclasses.replace(group, reallocated_machines=list(group.reallocated_machines))

    def handle(self, request: RecordedRequest) -> Reply:
        if not request.path.startswith(f"{self.BASE_PATH}/"):
            return problem(404, "Not Found")
        if request.header("Salad-Api-Key") != self.api_key:
            return problem(401, "Unauthorized", "The API key is missing or invalid.")
        path = request.path.removeprefix(self.BASE_PATH)
        with self.lock:
            return self._route(request, path)

    def _route(self, request: RecordedRequest, path: str) -> Reply:
        if match := _LIST_ROUTE.fullmatch(path):
            return self._list(request, *match.groups())
        if match := _ACTION_ROUTE.fullmatch(path):
            org, project, name, action = match.groups()
            return self._start_or_stop(request, self._find(org, project, name), action)
        if match := _REALLOCATE_ROUTE.fullmatch(path):
            org, project, name, machine_id = match.groups()
            return self._reallocate(request, self._find(org, project, name), machine_id)
        if match := _GROUP_ROUTE.fullmatch(path):
            return self._group(request, self._find(*match.groups()))
        return problem(404, "Not Found")

    def _find(self, org: str, project: str, name: str) -> FakeGroup | None:
        for group in self._groups.values():
            if (group.org, group.project, group.name) == (org, project, name):
                return group
        return None

    def _list(self, request: RecordedRequest, org: str, project: str) -> Reply:
        if request.method != "GET":
            return problem(405, "Method Not Allowed")
        items = [
            group.to_json()
            for group in self._groups.values()
            if (group.org, group.project) == (org, project)
        ]
        return Reply(200, {"items": items})

    def _group(self, request: RecordedRequest, group: FakeGroup | None) -> Reply:
        if group is None:
            return problem(404, "Not Found", "Container group not found.")
        if request.method == "GET":
            return Reply(200, group.to_json())
        if request.method == "PATCH":
            return self._patch(request, group)
        return problem(405, "Method Not Allowed")

    def _patch(self, request: RecordedRequest, group: FakeGroup) -> Reply:
        if request.content_type != MERGE_PATCH_JSON:
            return problem(415, "Unsupported Media Type", f"Use {MERGE_PATCH_JSON}.")
        if not isinstance(request.body, dict):
            return problem(400, "Bad Request", "The body must be a JSON object.")
        if "replicas" in request.body:
            replicas = request.body["replicas"]
            if not isinstance(replicas, int) or isinstance(replicas, bool):
                return problem(400, "Bad Request", "replicas must be an integer.")
            if not 0 <= replicas <= 500:
                return problem(400, "Bad Request", "replicas must be between 0 and 500.")
            group.replicas = replicas
        group.version += 1
        return Reply(200, group.to_json())

    def _start_or_stop(
        self, request: RecordedRequest, group: FakeGroup | None, action: str
    ) -> Reply:
        if group is None:
            return problem(404, "Not Found", "Container group not found.")
        if request.method != "POST":
            return problem(405, "Method Not Allowed")
        group.status = "running" if action == "start" else "stopped"
        return Reply(202)

    def _reallocate(
        self, request: RecordedRequest, group: FakeGroup | None, machine_id: str
    ) -> Reply:
        if group is None:
            return problem(404, "Not Found", "Container group not found.")
        if request.method != "POST":
            return problem(405, "Method Not Allowed")
        group.reallocated_machines.append(machine_id)
        return Reply(202)
