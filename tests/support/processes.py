"""Real `kelpie` processes for tests (the launchers live in the package: the demo uses them)."""

from kelpie.demo.processes import (
    KelpieProcess,
    ServerProcess,
    descendants,
    free_port,
    kill_process_tree,
    start_server,
    start_worker,
    wait_until_healthy,
)

__all__ = [
    "KelpieProcess",
    "ServerProcess",
    "descendants",
    "free_port",
    "kill_process_tree",
    "start_server",
    "start_worker",
    "wait_until_healthy",
]
