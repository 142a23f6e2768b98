"""Connections for webhook deliveries, made only to addresses the policy allows.

httpcore asks its network backend for a TCP connection to `(host, port)`; this backend
resolves the host itself, refuses the connection if any address it resolves to is refused
(`kelpie.webhooks.targets`), and otherwise connects to one of exactly those addresses. No
second resolution happens, so a DNS answer that changes between the check and the connection
(DNS rebinding) cannot redirect it; TLS still sends and verifies the host's name (SNI and the
certificate), and the `Host` header is the URL's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore

from kelpie.webhooks.targets import AddressPolicy, IPAddress, RefusedTarget

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the system resolver's order of preference."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, behind a resolver that checks every address."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = resolve) -> None:
        self._policy = policy
        self._resolve = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.checked_addresses(host, port)
        failure: Exception | None = None
        for address in addresses:  # in the resolver's order of preference
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # checked_addresses returns at least one
        raise failure

    async def checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, if the policy allows them all; RefusedTarget if
        any is refused (a name that also points inward is not one kelpie delivers to)."""
        addresses = await self._resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            refusal = self._policy.refusal(address)
            if refusal is not None:
                if host != str(address):
                    refusal = f"{host} resolves to a refused address: {refusal}"
                raise RefusedTarget(refusal)
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedTarget("webhooks are delivered over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
