"""Where callbacks may go: the rules for a `callback_url` and for the addresses it reaches.

A callback is a POST the service makes to a URL a caller chose, so without rules it is a
way into the service's own network (loopback listeners, private hosts, the cloud metadata
endpoint). The rules, checked twice:

- when a run is created, on the URL alone: http(s) only, https unless
  `COUNTERSIGN_CALLBACK_ALLOW_HTTP`, no user name or password, a port from 1 to 65535, the
  host in `COUNTERSIGN_CALLBACK_ALLOWED_HOSTS` when that is set, and an address written in
  the URL (in any of the forms resolvers accept: `0x7f000001`, `2130706433`, `[::ffff:127.0.0.1]`)
  judged as below. A host name cannot be judged then: its DNS answer may change;
- when the callback is sent, again on the URL (settings may have changed), then on every
  address the host name resolves to. `service.callbacks` connects only to those checked
  addresses.

An address is admitted when it is public. A host in the allow-list may also be private
(10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) or loopback: self-hosted ops systems
live there, and allow-listing a name is trusting its DNS. Link-local (169.254/16,
fe80::/10), cloud metadata, unspecified, multicast, broadcast and reserved addresses are
never admitted, allow-list or not. IPv4 addresses embedded in IPv6 ones (IPv4-mapped,
NAT64 64:ff9b::/96, 6to4) are judged as the IPv4 address they carry.

Pure: no I/O. The allow-list holds host names (exact, or `*.example.com` for any name under
example.com) and IP addresses; not networks, so that what it admits can be read off it.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_HTTP_SETTING = "COUNTERSIGN_CALLBACK_ALLOW_HTTP"
ALLOWED_HOSTS_SETTING = "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS"
DEFAULT_PORTS = {"http": 80, "https": 443}


class Reach(str, enum.Enum):
    """What kind of address a callback would reach."""

    PUBLIC = "public"
    PRIVATE = "private"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    METADATA = "cloud metadata"
    FORBIDDEN = "reserved, multicast or unspecified"


# Instance metadata and platform endpoints. Most are link-local (refused anyway); the
# others sit in ranges that are otherwise private (fd00:ec2::/32, 100.64/10) or even public
# (Azure's wire server), so they are named one by one.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    "169.254.170.2",  # AWS ECS task metadata and credentials
    "169.254.170.23",  # AWS EKS Pod Identity
    "169.254.169.123",  # AWS time sync
    "169.254.169.253",  # AWS VPC DNS
    "fd00:ec2::254",  # AWS instance metadata over IPv6
    "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
    "fd00:ec2::123",  # AWS time sync over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wire server
    "192.0.0.192",  # Oracle Cloud (classic)
))

_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
# Special-purpose ranges that `is_global` (Python 3.11) still calls global, or that embed
# addresses this module cannot judge (local-use NAT64, Teredo).
_FORBIDDEN_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "240.0.0.0/4", "255.255.255.255/32", "fec0::/10", "64:ff9b:1::/48", "2001::/32", "2001:db8::/32",
    "100::/64"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMBER = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class CallbackRefused(Exception):
    """The URL or its destination is not allowed. The message is about the caller's own URL
    (it names no address the service found), so it may be shown to the caller."""


class CallbackConfigError(ValueError):
    """The callback settings cannot work: `serve` refuses to start with this message."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def classify(address: IPAddress) -> Reach:
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(address.packed)  # fe80::1%eth0 -> fe80::1
        inner = embedded_ipv4(address)
        if inner is not None:
            return classify(inner)
    if address in METADATA_ADDRESSES:
        return Reach.METADATA
    if address.is_unspecified or address.is_multicast:
        return Reach.FORBIDDEN
    if address.is_loopback:
        return Reach.LOOPBACK
    if address.is_link_local:
        return Reach.LINK_LOCAL
    if any(address in n for n in _PRIVATE_NETWORKS if n.version == address.version):
        return Reach.PRIVATE
    if address.is_reserved or any(address in n for n in _FORBIDDEN_NETWORKS if n.version == address.version):
        return Reach.FORBIDDEN
    return Reach.PUBLIC if address.is_global else Reach.FORBIDDEN


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton's forms (what getaddrinfo accepts): 1 to 4 parts, each decimal, octal (0...)
    or hex (0x...), the last filling the remaining bytes: 2130706433, 0x7f000001, 0177.1."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.match(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                raise CallbackRefused("has a host that is neither a name nor a valid address")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        raise CallbackRefused("has a host that is neither a name nor a valid address")
    number = last
    for i, v in enumerate(leading):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def ip_literal(host: str) -> IPAddress | None:
    """The address a URL's host names, in any form a resolver would accept; None for a name."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host[:-1] if host.endswith(".") else host
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or "%" in host:
        raise CallbackRefused("has a host that is neither a name nor a valid address")
    return _legacy_ipv4(host)


def normalise_host(host: str) -> str:
    host = host.strip().lower()
    return host[:-1] if host.endswith(".") else host


@dataclass(frozen=True, slots=True)
class Destination:
    """A callback URL's destination, once its URL passed the checks."""

    scheme: str
    host: str  # lower case, no trailing dot, no brackets
    port: int
    address: IPAddress | None  # when the URL names an address rather than a host name
    allow_listed: bool


@dataclass(frozen=True, slots=True)
class _AllowedHost:
    name: str | None = None  # exact host name
    suffix: str | None = None  # "*.example.com" -> ".example.com"
    address: IPAddress | None = None

    def matches(self, host: str, address: IPAddress | None) -> bool:
        if address is not None:
            return self.address == address
        if self.name is not None:
            return host == self.name
        return self.suffix is not None and host.endswith(self.suffix)


def _parse_allowed(entry: str) -> _AllowedHost:
    text = entry.strip().lower()
    where = f"{ALLOWED_HOSTS_SETTING} entry {entry!r}"
    if not text:
        raise CallbackConfigError(f"{where} is empty")
    if "/" in text and "://" not in text:
        raise CallbackConfigError(f"{where}: networks (CIDR) are not supported; name the hosts or addresses")
    if "://" in text or "@" in text:
        raise CallbackConfigError(f"{where}: give a host name or an address, not a URL")
    try:
        address = ip_literal(text)
    except CallbackRefused:
        raise CallbackConfigError(f"{where} is neither a host name nor a valid address") from None
    if address is not None:
        reach = classify(address)
        if reach in (Reach.LINK_LOCAL, Reach.METADATA, Reach.FORBIDDEN):
            raise CallbackConfigError(f"{where} is a {reach.value} address, which callbacks never reach")
        return _AllowedHost(address=address)
    if not text.isascii():
        raise CallbackConfigError(f"{where}: give internationalised names in their ASCII form (xn--...)")
    wildcard = text.startswith("*.")
    name = normalise_host(text[2:] if wildcard else text)
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels) or (wildcard and len(labels) < 2):
        raise CallbackConfigError(f"{where} is not a host name (ops.example.com, or *.example.com for "
                                  "every name under example.com)")
    return _AllowedHost(suffix="." + name) if wildcard else _AllowedHost(name=name)


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    allow_http: bool = False
    allowed_hosts: tuple[_AllowedHost, ...] = ()

    @classmethod
    def from_settings(cls, *, allow_http: bool, allowed_hosts: Iterable[str]) -> CallbackPolicy:
        """Raises `CallbackConfigError` naming the bad entry."""
        return cls(allow_http=allow_http, allowed_hosts=tuple(_parse_allowed(e) for e in allowed_hosts))

    def check_url(self, url: str) -> Destination:
        """The URL's destination, or `CallbackRefused` saying what is wrong with the URL."""
        try:
            parts = urlsplit(url.strip())
            raw_host = parts.hostname
            port = parts.port
        except ValueError:
            raise CallbackRefused("is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise CallbackRefused("must be an https URL")
        if scheme == "http" and not self.allow_http:
            raise CallbackRefused(f"must use https (plain http is refused unless {ALLOW_HTTP_SETTING}=true)")
        if "@" in parts.netloc:
            raise CallbackRefused("must not contain a user name or password; receivers authenticate a callback "
                                  "by its X-Countersign-Callback-Signature")
        if not raw_host:
            raise CallbackRefused("has no host")
        if port is not None and not 1 <= port <= 65535:
            raise CallbackRefused("must have a port from 1 to 65535")
        host = normalise_host(raw_host)
        address = ip_literal(host)
        allow_listed = any(a.matches(host, address) for a in self.allowed_hosts)
        if self.allowed_hosts and not allow_listed:
            raise CallbackRefused(f"has a host that is not in {ALLOWED_HOSTS_SETTING}")
        destination = Destination(scheme, str(address) if address else host, port or DEFAULT_PORTS[scheme],
                                  address, allow_listed)
        if address is not None:
            self.admit(destination, [address], resolved=False)
        return destination

    def admit(self, destination: Destination, addresses: Sequence[IPAddress], *, resolved: bool = True) -> None:
        """Refuse unless every address may be reached: one bad answer among good ones is
        refused too, rather than quietly connecting to a subset."""
        allowed = {Reach.PUBLIC, Reach.PRIVATE, Reach.LOOPBACK} if destination.allow_listed else {Reach.PUBLIC}
        verb = "resolves to" if resolved else "is"
        for address in addresses:
            reach = classify(address)
            if reach in allowed:
                continue
            if reach in (Reach.PRIVATE, Reach.LOOPBACK):
                raise CallbackRefused(f"has a host that {verb} a {reach.value} address; callbacks reach only public "
                                      f"addresses, unless the host is in {ALLOWED_HOSTS_SETTING}")
            raise CallbackRefused(f"has a host that {verb} a {reach.value} address, which callbacks never reach")
