"""Fixtures of the worker tests: a shared `kelpie serve`, a `lab` per test (the SeaweedFS
server is the session-wide `seaweed` fixture)."""

from tests.support.worker import lab, worker_api

__all__ = ["lab", "worker_api"]
