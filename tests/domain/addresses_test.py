"""The SSRF guard's address rule, class by class, and the operator's allow-list."""

from __future__ import annotations

import pytest

from noteburst.domain.addresses import AddressPolicy, parse_networks

POLICY = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("192.0.2.1", "private"),  # documentation range: not global
        ("198.18.0.1", "private"),  # benchmarking range
        ("fd00:ec2::254", "metadata"),  # AWS IPv6 metadata service
        # IPv4 embedded in IPv6 is judged as the IPv4 address.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:100.64.0.1", "CGNAT"),
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = POLICY.refuse_address(address)
    assert reason is not None
    assert kind in reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert POLICY.refuse_address(address) is None


def test_scoped_ipv6_is_judged_without_its_scope() -> None:
    assert POLICY.refuse_address("fe80::1%eth0") is not None


def test_allow_list_admits_listed_networks_only() -> None:
    policy = AddressPolicy(
        allowed_networks=parse_networks(["127.0.0.1/32", "10.1.0.0/16"])
    )
    assert policy.refuse_address("127.0.0.1") is None
    assert policy.refuse_address("::ffff:127.0.0.1") is None
    assert policy.refuse_address("10.1.200.3") is None
    assert policy.refuse_address("127.0.0.2") is not None
    assert policy.refuse_address("10.2.0.1") is not None
    assert policy.refuse_address("::1") is not None
    assert policy.refuse_address("169.254.169.254") is not None


def test_one_refused_address_refuses_the_name() -> None:
    # A name with a public and a private record must not reach the private one.
    assert POLICY.refuse_addresses(["8.8.8.8", "10.0.0.1"]) is not None
    assert POLICY.refuse_addresses(["8.8.8.8", "1.1.1.1"]) is None
    assert POLICY.refuse_addresses([]) is not None


@pytest.mark.parametrize(
    "host", ["metadata.google.internal", "METADATA.google.internal.", "metadata"]
)
def test_metadata_names_are_refused_by_name(host: str) -> None:
    assert POLICY.refuse_host(host) is not None


def test_ordinary_names_pass_the_name_check() -> None:
    assert POLICY.refuse_host("hooks.example.com") is None


def test_allow_list_entries_must_be_networks() -> None:
    with pytest.raises(ValueError, match="host bits"):
        parse_networks(["10.0.0.1/8"])
    with pytest.raises(ValueError, match="does not appear"):
        parse_networks(["not-an-address"])
