"""Which webhook targets kelpie may deliver to: no loopback, private, link-local or otherwise
non-public address, whatever the spelling, unless an operator allows its network.

A tenant chooses the webhook URL, and the API POSTs to it from inside the operator's network;
without these rules any tenant could make the API call its own admin port, the cloud's
metadata service (169.254.169.254) or a database next to it (server-side request forgery).

Checked twice: at submission, URLs that carry credentials and hosts that are addresses (in any
spelling the resolver accepts: `2130706433`, `0x7f000001`, `127.1`, `[::ffff:127.0.0.1]`) or
`localhost` names are refused with a 400; at delivery, every address the host resolves to is
checked, and the connection is made to the address that was checked (see
`kelpie.webhooks.connect`), so a DNS answer that changes in between cannot slip through.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import urllib.parse
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_URL_SHAPE = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
# The host as it goes on the wire (IDNA-encoded): a DNS name or an IPv4 spelling.
_HOST_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Addresses that carry an IPv4 address inside an IPv6 one, and would reach it.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")


class RefusedTarget(Exception):
    """The webhook's host is, or resolves to, an address kelpie does not deliver to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_allowed_networks(text: str) -> tuple[IPNetwork, ...]:
    """`KELPIE_WEBHOOK_ALLOWED_NETWORKS`: comma-separated CIDR networks (`10.0.0.0/8`,
    `::1/128`; a bare address means that address only). Raises ValueError naming the bad
    entry."""
    networks: list[IPNetwork] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                hint = f" (did you mean {ipaddress.ip_network(entry, strict=False)}?)"
            raise ValueError(
                f"{entry!r} is not a network in CIDR notation such as 10.0.0.0/8 or ::1/128:"
                f" {exc}{hint}"
            ) from None
    return tuple(networks)


def webhook_url_problem(url: str) -> str | None:
    """Why a webhook URL cannot be used whatever the server's settings, or None."""
    if not _URL_SHAPE.match(url):
        return "must be an http:// or https:// URL"
    authority = url.split("://", 1)[1]
    authority = re.split(r"[/?#]", authority, maxsplit=1)[0]
    if "@" in authority:
        return (
            "must not carry credentials (user:password@): they would be sent and logged in"
            " clear; receivers check the delivery's signature instead"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"is not a valid URL: {exc}"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return "has a port outside 1-65535"
    host = parsed.raw_host.decode("ascii")
    if not _HOST_NAME.match(host) and _ipv6(host) is None:
        return "has a host that is neither a DNS name nor an IP address"
    return None


def literal_addresses(host: str) -> list[IPAddress]:
    """The addresses a host names without asking DNS: an IP address in any spelling the
    resolver accepts (dotted, decimal `2130706433`, hex `0x7f000001`, short `127.1`, octal
    `0177.0.0.1`, IPv6 with or without brackets), or loopback for `localhost` names
    (RFC 6761). Empty for any other name."""
    host = host.strip("[]").lower().rstrip(".")
    address = _ipv6(host)
    if address is not None:
        return [address]
    if host == "localhost" or host.endswith(".localhost"):
        return [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:
            # What getaddrinfo does with a numeric host (glibc's inet_aton): every legacy form.
            return [ipaddress.IPv4Address(socket.inet_aton(host))]
        except OSError:
            return []
    return []


def _ipv6(host: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(urllib.parse.unquote(host.strip("[]")))
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address routes to (6to4, NAT64, the deprecated IPv4-compatible
    `::a.b.c.d`), if any; IPv4-mapped addresses are judged by their IPv4 address directly."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    packed = address.packed
    if address in _NAT64 or (packed[:12] == bytes(12) and int(address) > 1):
        return ipaddress.IPv4Address(packed[12:])
    return None


def _not_public(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public unicast address."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public unicast addresses are allowed; every other one only inside `allowed`."""

    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why kelpie does not deliver to this address, or None if it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is a.b.c.d on the wire: judged as a.b.c.d.
            mapped = address.ipv4_mapped
            if self._is_allowed(address) or self._is_allowed(mapped):
                return None
            kind = _not_public(mapped)
            return None if kind is None else f"{address} ({mapped}) is {kind}"
        if self._is_allowed(address):
            return None
        kind = _not_public(address)
        if kind is not None:
            return f"{address} is {kind}"
        embedded = _embedded_ipv4(address)
        kind = None if embedded is None else _not_public(embedded)
        return None if kind is None else f"{address} ({embedded}) is {kind}"

    def literal_refusal(self, url: str) -> str | None:
        """Why a submitted URL is refused without resolving anything, or None: its host is an
        address (or a `localhost` name) kelpie does not deliver to."""
        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL:
            return None  # reported by the URL's own validation
        for address in literal_addresses(host):
            refusal = self.refusal(address)
            if refusal is not None:
                return f"{refusal}: kelpie does not deliver webhooks to non-public addresses"
        return None

    def _is_allowed(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)


@functools.lru_cache(maxsize=8)
def address_policy(allowed_networks: str) -> AddressPolicy:
    """The policy of a `KELPIE_WEBHOOK_ALLOWED_NETWORKS` value (validated at start)."""
    return AddressPolicy(parse_allowed_networks(allowed_networks))


def redact(url: str) -> str:
    """The URL as logs show it: without credentials, query string or fragment, which may hold
    secrets (`https://user:pw@host/hook?token=…` → `https://host/hook`)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
