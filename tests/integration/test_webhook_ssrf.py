"""Webhooks never reach the API's own network unless the operator allows it: every spelling of
an inward address is refused at submission, names that resolve inward make the event dead at
delivery, a redirect is never followed, and nothing ever reaches the local listener a tenant
aims at. Against a real `kelpie serve` and real listeners on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kelpie.store import open_store
from kelpie.store.models import NewJob
from kelpie.webhooks.connect import GuardedNetworkBackend
from kelpie.webhooks.targets import IPAddress, RefusedTarget, address_policy
from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.processes import ServerProcess, free_port, start_server
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import ReceiverProcess, start_receiver


@dataclass
class Listener:
    """A local service a tenant should never reach: counts the connections it accepts."""

    host: str
    sock: socket.socket
    accepted: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(peer)
            conn.close()


@contextlib.contextmanager
def listening(host: str) -> Iterator[Listener]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    listener = Listener(host, sock)
    thread = threading.Thread(target=listener.serve, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def v4() -> Iterator[Listener]:
    with listening("127.0.0.1") as listener:
        yield listener


@pytest.fixture(scope="module")
def v6() -> Iterator[Listener]:
    with listening("::1") as listener:
        yield listener


@dataclass
class Served:
    server: ServerProcess
    api: Api
    user: ApiUser
    database: Path


@contextlib.contextmanager
def serving(tmp: Path, allowed_networks: str, **env: str) -> Iterator[Served]:
    database = tmp / "kelpie.db"
    server = start_server(
        f"sqlite:///{database}",
        new_admin_key(),
        tmp / "logs",
        extra_env={"KELPIE_WEBHOOK_ALLOWED_NETWORKS": allowed_networks, **env},
    )
    api = Api(server, "sqlite")
    try:
        yield Served(server, api, api.new_user(), database)
    finally:
        api.close()
        server.stop()


@pytest.fixture(scope="module")
def public_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with the default: public addresses only."""
    with serving(tmp_path_factory.mktemp("public-only"), "") as served:
        yield served


def inward_urls(v4: Listener, v6: Listener) -> list[str]:
    """Every spelling of the local listeners, and of other inward addresses."""
    p4, p6 = v4.port, v6.port
    return [
        f"http://127.0.0.1:{p4}/hook",
        f"http://127.0.0.1.:{p4}/hook",
        f"http://127.1:{p4}/hook",
        f"http://2130706433:{p4}/hook",
        f"http://0x7f000001:{p4}/hook",
        f"http://0x7f.0.0.1:{p4}/hook",
        f"http://0177.0.0.1:{p4}/hook",
        f"http://0.0.0.0:{p4}/hook",
        f"http://0:{p4}/hook",
        f"http://localhost:{p4}/hook",
        f"http://LocalHost.:{p4}/hook",
        f"http://kelpie.localhost:{p4}/hook",
        f"https://127.0.0.1:{p4}/hook",
        f"http://[::1]:{p6}/hook",
        f"http://[0:0:0:0:0:0:0:1]:{p6}/hook",
        f"http://[::]:{p6}/hook",
        f"http://[::ffff:127.0.0.1]:{p4}/hook",
        f"http://[::ffff:7f00:1]:{p4}/hook",
        f"http://[::127.0.0.1]:{p4}/hook",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fe80::1%25lo]/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://172.16.0.1/hook",
        "http://100.64.0.1/hook",
        "http://[fd00::1]/hook",
        "http://224.0.0.1/hook",
        "http://255.255.255.255/hook",
        f"http://user:pass@127.0.0.1:{p4}/hook",
        "https://user:pass@example.com/hook",
        "https://token@example.com/hook",
    ]


def test_every_spelling_of_an_inward_target_is_refused_at_submission(
    public_only: Served, v4: Listener, v6: Listener
) -> None:
    user, group = public_only.user, "ssrf-submitted"
    for url in inward_urls(v4, v6):
        response = user.http.post(
            "/jobs", json={"command": "x", "container_group_id": group, "webhook": url}
        )
        assert response.status_code == 400, (url, response.text)
        assert response.json()["message"].startswith("webhook"), (url, response.text)

    assert user.http.get("/jobs", params={"container_group_id": group}).json()["_count"] == 0
    assert v4.accepted == [] and v6.accepted == []


def test_a_batch_with_one_inward_webhook_is_refused_whole_naming_the_item(
    public_only: Served, v4: Listener
) -> None:
    user, group = public_only.user, "ssrf-batch"
    fine = {"command": "x", "container_group_id": group, "webhook": "https://example.com/h"}
    inward = {**fine, "webhook": f"http://2130706433:{v4.port}/hook"}

    response = user.http.post("/jobs/batch", json=[fine, inward, fine])

    assert response.status_code == 400
    assert response.json()["index"] == 1
    assert response.json()["message"].startswith("webhook")
    assert user.http.get("/jobs", params={"container_group_id": group}).json()["_count"] == 0


def outbox(database: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM webhook_outbox ORDER BY id")]


def queue_events_directly(database: Path, user_id: str, urls: list[str]) -> None:
    """Events to `urls` written straight into the store, as an older kelpie (without the
    submission check) would have left them."""

    async def queue() -> None:
        store = open_store(f"sqlite:///{database}")
        await store.open()
        try:
            for n, url in enumerate(urls):
                spec = {"command": "x", "arguments": [], "environment": {}}
                job = NewJob(f"stored-{n}", 3, 3600, webhook=url, spec=spec)
                await store.create_jobs(user_id, [job])
                assert await store.claim_job("m", f"stored-{n}", user_id) is not None
        finally:
            await store.close()

    asyncio.run(queue())


def resolves_to_loopback(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return any(str(info[4][0]).startswith("127.") or info[4][0] == "::1" for info in infos)


def test_targets_resolving_inward_at_delivery_are_dead_at_once_and_reach_nothing(
    public_only: Served, v4: Listener, v6: Listener
) -> None:
    # Names that pass submission (they are not addresses) but resolve to this machine.
    names = [name for name in (socket.gethostname(), "localhost") if resolves_to_loopback(name)]
    via_api = [f"http://{name}:{v4.port}/hook" for name in names if name != "localhost"]
    user = public_only.user
    for n, url in enumerate(via_api):
        user.submit(container_group_id=f"named-{n}", webhook=url)
        assert user.claim("m", f"named-{n}") is not None
    # Every spelling, stored before submissions were checked.
    stored = [url for url in inward_urls(v4, v6) if str(v4.port) in url or str(v6.port) in url]
    stored += [f"http://{name}:{v4.port}/hook" for name in names]
    queue_events_directly(public_only.database, user.id, stored)
    expected = [*via_api, *stored]

    def dead() -> list[dict[str, Any]] | None:
        rows = [row for row in outbox(public_only.database) if row["url"] in expected]
        done = len(rows) == len(expected) and all(row["dead_at"] for row in rows)
        return rows if done else None

    rows = wait_for(dead, "every inward event given up", timeout=30)
    assert all(row["delivered_at"] is None and row["attempts"] == 1 for row in rows)
    assert all(row["last_error"] for row in rows)
    assert v4.accepted == [] and v6.accepted == []


@pytest.fixture(scope="module")
def loopback_one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server allowed to deliver to 127.0.0.1 only: 127.0.0.2 and ::1 stay refused."""
    with serving(
        tmp_path_factory.mktemp("loopback-one"), "127.0.0.1/32", KELPIE_LOG_LEVEL="debug"
    ) as served:
        yield served


@pytest.fixture
def receivers() -> Iterator[list[ReceiverProcess]]:
    started: list[ReceiverProcess] = []
    yield started
    for receiver in started:
        receiver.stop()


def webhook_secret(user: ApiUser) -> str:
    secret: str = user.http.get("/users/me").json()["webhook_secret"]
    return secret


def test_an_allowed_network_is_delivered_to_and_the_rest_stays_refused(
    loopback_one: Served, receivers: list[ReceiverProcess], tmp_path: Path
) -> None:
    user = loopback_one.user
    receiver = start_receiver(free_port(), webhook_secret(user), tmp_path / "ok.jsonl")
    receivers.append(receiver)
    user.submit(container_group_id="allowed", webhook=receiver.url)
    assert user.claim("m", "allowed") is not None

    [record] = wait_for(receiver.accepted, "the delivery to the allowed network")
    assert record["payload"]["status"] == "running"
    for refused in (f"http://127.0.0.2:{receiver.port}/hook", f"http://[::1]:{receiver.port}/"):
        response = user.http.post(
            "/jobs", json={"command": "x", "container_group_id": "g", "webhook": refused}
        )
        assert response.status_code == 400, refused


def test_a_redirect_to_a_refused_address_is_not_followed(
    loopback_one: Served, receivers: list[ReceiverProcess], tmp_path: Path
) -> None:
    user = loopback_one.user
    with listening("127.0.0.2") as inner:
        redirecting = start_receiver(
            free_port(),
            webhook_secret(user),
            tmp_path / "redirect.jsonl",
            redirect=f"http://127.0.0.2:{inner.port}/hook",
        )
        receivers.append(redirecting)
        user.submit(container_group_id="redirected", webhook=redirecting.url)
        assert user.claim("m", "redirected") is not None

        # Answered 302 twice: the first attempt and its retry, neither followed.
        wait_for(
            lambda: inner.accepted or len(redirecting.records()) >= 2,
            "the event attempted again, or the redirect followed",
        )

        assert inner.accepted == []
    rows = [row for row in outbox(loopback_one.database) if row["url"] == redirecting.url]
    assert len(rows) == 1 and rows[0]["delivered_at"] is None and rows[0]["dead_at"] is None


def test_logs_never_show_a_webhooks_credentials_or_query_string(
    loopback_one: Served, receivers: list[ReceiverProcess], tmp_path: Path
) -> None:
    user = loopback_one.user
    failing = start_receiver(free_port(), webhook_secret(user), tmp_path / "500.jsonl", status=500)
    receivers.append(failing)
    with_query = f"{failing.url}?token=query-secret-1"
    user.submit(container_group_id="logged", webhook=with_query)
    assert user.claim("m", "logged") is not None
    with_credentials = f"http://alice:password-secret-2@127.0.0.1:{failing.port}/hook?k=query-3"
    queue_events_directly(loopback_one.database, user.id, [with_credentials])

    def logged() -> bool:
        rows = {row["url"]: row for row in outbox(loopback_one.database)}
        return rows[with_query]["attempts"] >= 2 and rows[with_credentials]["dead_at"] is not None

    wait_for(logged, "both events attempted or given up")
    log = loopback_one.server.log()
    assert f"127.0.0.1:{failing.port}/hook" in log  # the URLs are logged, but only so far
    for secret in ("query-secret-1", "alice", "password-secret-2", "query-3"):
        assert secret not in log


@pytest.mark.parametrize("value", ["10.0.0.1/8", "127.0.0.0/33", "localhost"])
def test_kelpie_serve_refuses_a_bad_allowed_networks_value_at_start(
    value: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "KELPIE_DATABASE_URL": f"sqlite:///{tmp_path / 'kelpie.db'}",
        "KELPIE_WEBHOOK_ALLOWED_NETWORKS": value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "kelpie", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert value in result.stderr and "KELPIE_WEBHOOK_ALLOWED_NETWORKS" in result.stderr
    assert not (tmp_path / "kelpie.db").exists()  # refused before touching anything


# -- the connection goes to the address that was checked ------------------------------------


@dataclass
class Answering:
    """A local HTTP(S) endpoint answering 204, noting each request's Host and TLS name."""

    server: http.server.HTTPServer
    hosts: list[str] = field(default_factory=list)
    tls_names: list[str | None] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@contextlib.contextmanager
def answering(tls: ssl.SSLContext | None = None) -> Iterator[Answering]:
    endpoint: Answering

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            endpoint.hosts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint = Answering(server)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: endpoint.tls_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


async def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    answers = [[ipaddress.ip_address("127.0.0.1")], [ipaddress.ip_address("10.0.0.7")]]
    asked: list[str] = []

    async def rebinding_dns(host: str, port: int) -> list[IPAddress]:
        """127.0.0.1 first, then somewhere inward: a DNS rebinding attacker's answers."""
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    backend = GuardedNetworkBackend(address_policy("127.0.0.0/8"), rebinding_dns)
    with answering() as endpoint:
        url = f"http://rebind.invalid:{endpoint.port}/hook"
        async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            response = await pool.request("POST", url, content=b"{}")
        async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            with pytest.raises(RefusedTarget):
                await pool.request("POST", url, content=b"{}")

    # `rebind.invalid` exists in no DNS: the request reached the one address checked, once.
    assert response.status == 204 and asked == ["rebind.invalid", "rebind.invalid"]
    assert endpoint.hosts == [f"rebind.invalid:{endpoint.port}"]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_an_https_receiver_gets_its_name_in_tls_and_host_while_reached_at_the_checked_address(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with (
        answering(tls) as endpoint,
        serving(tmp_path, "127.0.0.0/8,::1/128", SSL_CERT_FILE=str(cert)) as served,
    ):
        url = f"https://localhost:{endpoint.port}/hook"
        served.user.submit(container_group_id="tls", webhook=url)
        assert served.user.claim("m", "tls") is not None

        wait_for(
            lambda: any(row["delivered_at"] for row in outbox(served.database)),
            "the delivery over TLS",
        )

    assert endpoint.hosts == [f"localhost:{endpoint.port}"]
    assert endpoint.tls_names == ["localhost"]
