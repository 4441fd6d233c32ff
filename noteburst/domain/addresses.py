"""Which network addresses a webhook may be delivered to (the SSRF guard's rule).

A webhook URL is chosen by whoever submits a notebook, and Noteburst then
makes an HTTP request to it from inside the deployment's network.  Left
alone, that lets a caller reach what only the deployment can: the cloud
metadata service (credentials at 169.254.169.254), the database, Redis,
the Jupyter servers, admin ports on loopback.  So every address a webhook's
host resolves to must be a public unicast address, unless an operator
allow-listed it (a test receiver on loopback, an internal receiver on a
private network).

This module is only the rule, with no I/O: resolving names (with a timeout,
at submission and again before every attempt, since DNS can change) and
connecting to the very address that was checked are the sender's job
(:mod:`noteburst.storage.webhook_client`).  The standard library's
:mod:`ipaddress` knows the special-purpose registries; the rule adds what it
does not flag (CGNAT 100.64.0.0/10 is neither private nor global there in
every version) and unwraps IPv6 forms that embed an IPv4 address
(IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``), so ``::ffff:127.0.0.1`` is judged as ``127.0.0.1``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "METADATA_HOSTNAMES",
    "AddressPolicy",
    "IPAddress",
    "IPNetwork",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "kubernetes.default",
        "kubernetes.default.svc",
    }
)
"""Names of cloud metadata and cluster services, refused whatever they resolve to."""

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_EC2_IPV6_METADATA = ipaddress.IPv6Network("fd00:ec2::/32")


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse allow-list entries: addresses or networks in CIDR notation.

    Raises
    ------
    ValueError
        An entry is neither (host bits set, e.g. ``10.0.0.1/8``, count as
        malformed, so a typo does not silently allow a whole network).
    """
    return tuple(ipaddress.ip_network(value.strip(), strict=True) for value in values)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address stands for, if it embeds one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def _refusal(address: IPAddress) -> str | None:  # noqa: PLR0911 - one per class
    """Name the class of a non-public address, or None for a public one."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        # Also the metadata service: 169.254.169.254, fe80::/10.
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (CGNAT)"
    if isinstance(address, ipaddress.IPv6Address) and address in _EC2_IPV6_METADATA:
        return "cloud metadata"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        # RFC 1918, fc00::/7 and the other special-purpose ranges the
        # registry marks as not globally reachable.
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Decides whether a webhook may be sent to a host name and its addresses.

    Parameters
    ----------
    allowed_networks
        Addresses and networks the operator allows even though they are
        not public (checked first, on the address as resolved and on the
        IPv4 address it embeds).
    """

    allowed_networks: tuple[IPNetwork, ...] = ()

    def refuse_host(self, host: str) -> str | None:
        """Why a host name is refused before it is resolved, or None.

        Well-known metadata names are refused by name, since what they
        resolve to differs per cloud and may look public.
        """
        name = host.lower().rstrip(".")
        if name in METADATA_HOSTNAMES:
            return f"{host!r} is a cloud metadata service name"
        return None

    def refuse_address(self, address: IPAddress | str) -> str | None:
        """Why an address is refused, or None if a webhook may go there.

        Parameters
        ----------
        address
            One resolved address (an IPv6 scope such as ``%eth0`` is
            ignored for the decision).
        """
        if isinstance(address, str):
            address = ipaddress.ip_address(address.split("%", 1)[0])
        if self._allowed(address):
            return None
        judged: IPAddress = address
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                if self._allowed(embedded):
                    return None
                judged = embedded
        reason = _refusal(judged)
        if reason is None:
            return None
        shown = str(address) if judged == address else f"{address} ({judged})"
        return f"{shown} is a {reason} address"

    def refuse_addresses(self, addresses: Sequence[IPAddress | str]) -> str | None:
        """Why a set of resolved addresses is refused: any refused one refuses all.

        Refusing on any (not on all) stops a name whose records mix a
        public and a private address from reaching the private one.
        """
        if not addresses:
            return "the name resolves to no address"
        for address in addresses:
            reason = self.refuse_address(address)
            if reason is not None:
                return reason
        return None

    def _allowed(self, address: IPAddress) -> bool:
        return any(
            address.version == network.version and address in network
            for network in self.allowed_networks
        )
