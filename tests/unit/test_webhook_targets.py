"""Which webhook targets are refused without resolving anything: every spelling of an inward
address, credentials in the URL, and what logs show of a URL."""

from __future__ import annotations

import ipaddress

import pytest

from kelpie.webhooks.targets import (
    AddressPolicy,
    address_policy,
    parse_allowed_networks,
    redact,
    webhook_url_problem,
)

PUBLIC_ONLY = AddressPolicy()

# Every spelling of an address kelpie must not reach, as a tenant could write it.
INWARD_URLS = [
    "http://127.0.0.1:8787/jobs",
    "http://127.0.0.1./hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://0x7f.1/hook",
    "http://0.0.0.0/hook",
    "http://0/hook",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost:8080/hook",
    "http://[::1]/hook",
    "http://[0:0:0:0:0:0:0:1]/hook",
    "http://[::]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[2002:7f00:1::]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fe80::1%25eth0]/hook",
    "http://10.0.0.5/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://[fc00::1]/hook",
    "http://224.0.0.1/hook",
    "http://[ff02::1]/hook",
    "http://255.255.255.255/hook",
    "http://240.0.0.1/hook",
    "https://127.0.0.1/hook",
]

PUBLIC_URLS = [
    "https://example.com/hook",
    "https://hooks.example.com:8443/kelpie?tenant=a",
    "http://8.8.8.8/hook",
    "http://[2606:4700:4700::1111]/hook",
    "http://[::ffff:8.8.8.8]/hook",
    "http://localhost.example.com/hook",  # a DNS name like any other: checked at delivery
    "http://vm/hook",
]


@pytest.mark.parametrize("url", INWARD_URLS)
def test_every_spelling_of_an_inward_address_is_refused(url: str) -> None:
    assert webhook_url_problem(url) is None  # a well-formed URL...
    assert PUBLIC_ONLY.literal_refusal(url) is not None  # ...to a refused address


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_public_addresses_and_dns_names_pass_submission(url: str) -> None:
    assert webhook_url_problem(url) is None
    assert PUBLIC_ONLY.literal_refusal(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/hook",
        "https://token@example.com/hook",
        "http://user:pass@127.0.0.1/hook",
        "http://@example.com/hook",
        "http://example.com\\@127.0.0.1/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http:///hook",
        "http://exa mple.com/hook",
        "http://ex%41mple.com/hook",
        "http://example.com:99999/hook",
        "http://0177.0.0.1/hook",
    ],
)
def test_urls_that_cannot_be_delivered_safely_are_refused_whatever_the_settings(url: str) -> None:
    assert webhook_url_problem(url) is not None


def test_the_refusal_names_the_address_it_stands_for() -> None:
    refusal = PUBLIC_ONLY.literal_refusal("http://2130706433/hook")

    assert refusal is not None and "127.0.0.1" in refusal


def test_allowed_networks_let_their_addresses_through_in_every_spelling() -> None:
    local = address_policy("127.0.0.0/8,::1/128")

    for url in (
        "http://127.0.0.1/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ):
        assert local.literal_refusal(url) is None, url
    assert local.literal_refusal("http://10.0.0.1/hook") is not None
    assert local.literal_refusal("http://169.254.169.254/") is not None


def test_an_allowed_ipv4_network_does_not_allow_ipv6_loopback() -> None:
    only_v4 = address_policy("127.0.0.0/8")

    assert only_v4.refusal(ipaddress.ip_address("127.0.0.2")) is None
    assert only_v4.refusal(ipaddress.ip_address("::1")) is not None
    assert only_v4.literal_refusal("http://localhost/hook") is not None  # ::1 as well


@pytest.mark.parametrize(
    ("text", "networks"),
    [
        ("", ()),
        ("127.0.0.0/8,::1/128", ("127.0.0.0/8", "::1/128")),
        (" 10.0.0.0/8 , 192.168.0.0/16 ,", ("10.0.0.0/8", "192.168.0.0/16")),
        ("10.1.2.3", ("10.1.2.3/32",)),
    ],
)
def test_allowed_networks_are_comma_separated_cidrs(text: str, networks: tuple[str, ...]) -> None:
    assert tuple(str(n) for n in parse_allowed_networks(text)) == networks


@pytest.mark.parametrize("text", ["10.0.0.1/8", "10.0.0.0/33", "localhost", "10.0.0.0/8;::1"])
def test_a_bad_allowed_network_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="not a network") as raised:
        parse_allowed_networks(text)
    assert text.split(";")[0].split(",")[0] in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@hooks.example.com/k?token=abc#x", "https://hooks.example.com/k"),
        ("http://hooks.example.com:8080/a/b?sig=1", "http://hooks.example.com:8080/a/b"),
        ("http://[::1]:9000/hook?x=1", "http://[::1]:9000/hook"),
        ("https://example.com", "https://example.com"),
    ],
)
def test_logs_show_urls_without_credentials_or_query(url: str, shown: str) -> None:
    assert redact(url) == shown
