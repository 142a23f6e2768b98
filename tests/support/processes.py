"""Real `kelpie` processes for tests (the launchers live in the package: the demo uses them)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kelpie.demo import processes
from kelpie.demo.processes import (
    KelpieProcess,
    ServerProcess,
    descendants,
    free_port,
    kill_process_tree,
    start_worker,
    wait_until_healthy,
)

# The tests' webhook receivers listen on this machine, which kelpie refuses to deliver to
# unless the operator allows it.
LOCAL_WEBHOOK_NETWORKS = "127.0.0.0/8,::1/128"


def start_server(
    database_url: str,
    admin_key: str,
    log_dir: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    extra_env: Mapping[str, str] | None = None,
    wait_until_ready: bool = True,
) -> ServerProcess:
    """`kelpie serve` allowed to deliver webhooks to local receivers (a test that proves the
    refusal sets `KELPIE_WEBHOOK_ALLOWED_NETWORKS` itself in `extra_env`)."""
    env = {"KELPIE_WEBHOOK_ALLOWED_NETWORKS": LOCAL_WEBHOOK_NETWORKS, **(extra_env or {})}
    return processes.start_server(
        database_url,
        admin_key,
        log_dir,
        port=port,
        workers=workers,
        extra_env=env,
        wait_until_ready=wait_until_ready,
    )


__all__ = [
    "LOCAL_WEBHOOK_NETWORKS",
    "KelpieProcess",
    "ServerProcess",
    "descendants",
    "free_port",
    "kill_process_tree",
    "start_server",
    "start_worker",
    "wait_until_healthy",
]
