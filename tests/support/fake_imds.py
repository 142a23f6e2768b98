"""A fake SaladCloud Instance Metadata Service: a real HTTP server on 127.0.0.1.

Speaks `GET /v1/status`, `GET|PUT /v1/deletion-cost` and `POST /v1/reallocate`, requires the
`Metadata: true` header (else 400), records every request and every deletion cost and
reallocation asked for::

    with FakeImds() as imds:
        client = ImdsClient(imds.url)
        await client.set_deletion_cost(5)
        await client.reallocate("blocked from 5 jobs")
        assert imds.deletion_costs == [5]
        assert imds.reallocations == ["blocked from 5 jobs"]

Faults come from `FakeHttpServer`: `imds.fail_next(1, 500)`, `imds.stall_next(1, 3.0)`.
"""

from __future__ import annotations

from tests.support.fake_salad import FakeHttpServer, RecordedRequest, Reply, problem


class FakeImds(FakeHttpServer):
    """SaladCloud IMDS in memory; `url` is the base URL to give `ImdsClient`."""

    def __init__(self, *, ready: bool = True, started: bool = True) -> None:
        super().__init__()
        self.ready = ready
        self.started = started
        self._deletion_costs: list[int] = []
        self._reallocations: list[str] = []

    @property
    def url(self) -> str:
        return self.root_url

    @property
    def deletion_costs(self) -> list[int]:
        """Every deletion cost set, in order (a copy)."""
        with self.lock:
            return list(self._deletion_costs)

    @property
    def deletion_cost(self) -> int:
        """The current deletion cost (0 until one is set, like a fresh instance)."""
        with self.lock:
            return self._deletion_costs[-1] if self._deletion_costs else 0

    @property
    def reallocations(self) -> list[str]:
        """The reason of every reallocation asked for, in order (a copy)."""
        with self.lock:
            return list(self._reallocations)

    def handle(self, request: RecordedRequest) -> Reply:
        if request.header("Metadata") != "true":
            return problem(400, "Bad Request", "The Metadata: true header is required.")
        route = (request.method, request.path)
        with self.lock:
            if route == ("GET", "/v1/status"):
                return Reply(200, {"ready": self.ready, "started": self.started})
            if route == ("GET", "/v1/deletion-cost"):
                return Reply(200, {"deletion_cost": self.deletion_cost})
            if route == ("PUT", "/v1/deletion-cost"):
                return self._set_deletion_cost(request)
            if route == ("POST", "/v1/reallocate"):
                return self._reallocate(request)
        return problem(404, "Not Found")

    def _set_deletion_cost(self, request: RecordedRequest) -> Reply:
        body = request.body
        cost = body.get("deletion_cost") if isinstance(body, dict) else None
        if not isinstance(cost, int) or isinstance(cost, bool):
            return problem(400, "Bad Request", "deletion_cost must be an integer.")
        self._deletion_costs.append(cost)
        return Reply(200, {"deletion_cost": cost})

    def _reallocate(self, request: RecordedRequest) -> Reply:
        body = request.body
        reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason:
            return problem(400, "Bad Request", "reason must be a non-empty string.")
        self._reallocations.append(reason)
        return Reply(202)
