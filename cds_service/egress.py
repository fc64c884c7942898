"""Outbound HTTP policy: which FHIR servers the fallback may call, and the HTTP client settings it uses.

A hook request names its ``fhirServer``; the service only calls it when it matches the allow-list of
the issuer whose JWT was verified (``CDS_TRUSTED_ISSUERS`` entry ``fhirServers``), or, without JWT
issuers (development on loopback), when it is a loopback server or listed in ``CDS_FHIR_SERVERS``.
A match is on scheme, host, port and path prefix at a segment boundary; a path with a dot segment (even
percent-encoded), ``;``, a backslash or an encoded ``%``, ``\\`` or ``/`` is refused outright, in ``fhirServer`` and
in every ``next`` link, since a server behind the prefix check may read it as a different path.

The name check alone could be defeated by DNS (a listed host that resolves to 127.0.0.1, or changes
its answer between a check and the connection), so the address actually connected to is checked too,
on the socket right after ``connect`` and before a byte is sent (``peer_allowed``): loopback, private,
link-local, multicast, unspecified and reserved addresses are refused unless the allow-list entry
itself names such an address or ``localhost`` (or, in development, the server is a loopback one).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import requests

from cds_service.config import Config, ConfigError, issuer_settings

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
#: Path characters no FHIR base or ``next`` link needs, that servers and proxies behind the prefix check read
#: differently from us: ``;`` (path parameters: Tomcat/Jetty drop ``..;`` to ``..``), ``%25`` (a second decoding
#: turns ``%252e%252e`` into ``..``), ``%5c`` and ``\\`` (a backslash is a slash to some servers), ``%2f`` (an
#: encoded slash, a segment boundary to some and not to others). Refused anywhere in the path, any case.
_TRICKY_PATH = re.compile(r"[;\\]|%(?:25|5c|2f)", re.IGNORECASE)
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_special_address(address: IpAddress) -> bool:
    """Loopback, private, link-local, multicast, unspecified, reserved or otherwise not globally routable."""
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    )


def is_loopback_name(host: str) -> bool:
    """``localhost`` (and its usual aliases) or a literal loopback address."""
    host = host.strip("[]").rstrip(".").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int
    path: str


def _split(url: str) -> _Url | None:
    """Scheme, host, port and normalized path of an absolute http(s) URL; None when it is not one we accept."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
        return None
    if _TRICKY_PATH.search(parts.path):
        return None
    segments = unquote(parts.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return None
    return _Url(scheme, host, port, parts.path.rstrip("/"))


@dataclass(frozen=True)
class ServerRule:
    """One allow-list entry: ``scheme://host[:port][/path]``."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str, setting: str = "fhirServers") -> ServerRule:
        parts = _split(url)
        if parts is None or urlsplit(url.strip()).query or urlsplit(url.strip()).fragment:
            raise ConfigError(f"{setting}: {url!r} is not an http(s) base URL")
        return cls(parts.scheme, parts.host, parts.port, parts.path)

    @property
    def names_special_host(self) -> bool:
        """The entry itself is ``localhost`` or a loopback/private/... literal: such peers are then expected."""
        address = _ip(self.host)
        return is_loopback_name(self.host) or (address is not None and is_special_address(address))

    def matches(self, url: _Url) -> bool:
        if (url.scheme, url.host, url.port) != (self.scheme, self.host, self.port):
            return False
        return not self.path or url.path == self.path or url.path.startswith(self.path + "/")


@dataclass(frozen=True)
class FhirAccess:
    """The FHIR servers one hook call may reach."""

    rules: tuple[ServerRule, ...] = ()
    #: Development mode (no JWT issuers): any loopback server, http or https.
    loopback: bool = False

    def _rule_for(self, url: _Url) -> ServerRule | None:
        return next((rule for rule in self.rules if rule.matches(url)), None)

    def allows(self, url: str) -> bool:
        """Whether ``url`` may be requested at all (checked before any connection)."""
        parts = _split(url)
        if parts is None:
            return False
        return self._rule_for(parts) is not None or (self.loopback and is_loopback_name(parts.host))

    def peer_allowed(self, scheme: str, host: str, port: int, peer: str) -> bool:
        """Whether the address a connection to ``host`` actually reached is acceptable (after DNS)."""
        address = _ip(peer)
        if address is None:
            return False
        parts = _Url(scheme, host.strip("[]").rstrip(".").lower(), port, "")
        named = [rule for rule in self.rules if (rule.scheme, rule.host, rule.port) == (parts.scheme, parts.host, port)]
        if not named and not (self.loopback and is_loopback_name(parts.host)):
            return False
        if not is_special_address(address):
            return True
        if any(rule.names_special_host for rule in named):
            return True
        return self.loopback and is_loopback_name(parts.host) and address.is_loopback


NO_ACCESS = FhirAccess()


def fhir_access_for(config: Config, issuer: str | None) -> FhirAccess:
    """The FHIR allow-list of a call: the verified issuer's ``fhirServers`` when JWT issuers are configured
    (nothing when the call has no verified issuer), else loopback plus ``CDS_FHIR_SERVERS``."""
    if config.auth_enabled:
        if issuer is None or issuer not in config.trusted_issuers:
            return NO_ACCESS
        _, servers = issuer_settings(config.trusted_issuers[issuer])
        return FhirAccess(rules=tuple(ServerRule.parse(s) for s in servers))
    return FhirAccess(rules=tuple(ServerRule.parse(s, "CDS_FHIR_SERVERS") for s in config.fhir_servers), loopback=True)


def configure_session(session: requests.Session, config: Config) -> requests.Session:
    """No ambient credentials (.netrc) nor environment proxies; only ``CDS_HTTP_PROXY`` when set."""
    session.trust_env = False
    session.proxies = proxies(config)
    return session


def proxies(config: Config) -> dict[str, str]:
    return {"http": config.http_proxy, "https": config.http_proxy} if config.http_proxy else {}


def new_session(config: Config) -> requests.Session:
    """A ``requests`` session configured by ``configure_session``."""
    return configure_session(requests.Session(), config)
