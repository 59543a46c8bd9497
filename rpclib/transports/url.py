"""Transport URLs: ``scheme://[user:pass@]host[:port][,host[:port]...]/virtual_host?opt=value``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from rpclib.exceptions import InvalidTransportURL


@dataclass(frozen=True, slots=True)
class Host:
    """One ``host:port`` of a URL (several mean failover)."""

    hostname: str
    port: int | None = None
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class TransportURL:
    """A parsed transport URL; drivers read hosts, path and options from it."""

    raw: str
    scheme: str
    hosts: tuple[Host, ...] = ()
    virtual_host: str = ""
    options: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return _redact(self.raw)

    def option(self, name: str, default: str | None = None) -> str | None:
        """A query option as text."""
        return self.options.get(name, default)

    def int_option(self, name: str, default: int, *, minimum: int = 0) -> int:
        """A query option as an int >= ``minimum``; bad text names the option."""
        text = self.options.get(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise InvalidTransportURL(
                str(self), f"option {name}={text!r} is not an integer"
            ) from None
        if value < minimum:
            raise InvalidTransportURL(str(self), f"option {name}={value} must be >= {minimum}")
        return value

    def float_option(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A query option as a float >= ``minimum``; bad text names the option."""
        text = self.options.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise InvalidTransportURL(
                str(self), f"option {name}={text!r} is not a number"
            ) from None
        if not value >= minimum:
            raise InvalidTransportURL(str(self), f"option {name}={value} must be >= {minimum}")
        return value

    def seconds_option(self, name: str, default: float, *, positive: bool = True) -> float:
        """A query option as a finite duration in seconds (> 0, or >= 0 unless ``positive``)."""
        text = self.options.get(name)
        try:
            value = default if text is None else float(text)
        except ValueError:
            raise InvalidTransportURL(
                str(self), f"option {name}={text!r} is not a number of seconds"
            ) from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "a positive" if positive else "a non-negative"
            raise InvalidTransportURL(
                str(self), f"option {name}={value:g} must be {bound} finite number of seconds"
            )
        return value

    def bool_option(self, name: str, default: bool) -> bool:
        """A query option as a boolean (true/false/1/0/yes/no/on/off)."""
        text = self.options.get(name)
        if text is None:
            return default
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InvalidTransportURL(str(self), f"option {name}={text!r} is not a boolean")

    def reject_unknown_options(self, known: set[str]) -> None:
        """Raise naming any option the driver does not understand (typos must not pass)."""
        unknown = sorted(set(self.options) - known)
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise InvalidTransportURL(
                str(self), f"unknown option(s) {', '.join(unknown)} (known: {names})"
            )


def _redact(url: str) -> str:
    """The URL with passwords replaced, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    parts = []
    for hostpart in netloc.split(","):
        creds, at, hostport = hostpart.rpartition("@")
        if at and ":" in creds:
            user = creds.split(":", 1)[0]
            parts.append(f"{user}:***@{hostport}")
        else:
            parts.append(hostpart)
    return f"{scheme}://{','.join(parts)}{slash}{tail}"


def parse_url(url: str) -> TransportURL:
    """Parse ``url``; raise InvalidTransportURL naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise InvalidTransportURL(repr(url), "a transport URL must be a non-empty string")
    safe = _redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise InvalidTransportURL(
            safe, "missing scheme (expected e.g. 'memory://' or 'rabbit://host')"
        )
    if not scheme.replace("+", "").replace("-", "").isalnum():
        raise InvalidTransportURL(safe, f"bad scheme {scheme!r}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    hosts: list[Host] = []
    if netloc:
        for part in netloc.split(","):
            if not part:
                raise InvalidTransportURL(safe, "empty host in host list")
            hosts.append(_parse_host(safe, scheme, part))
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise InvalidTransportURL(safe, f"option {key!r} given twice")
        options[key] = value
    return TransportURL(
        raw=url,
        scheme=scheme.lower(),
        hosts=tuple(hosts),
        virtual_host=unquote(path),
        options=options,
    )


def _parse_host(safe: str, scheme: str, part: str) -> Host:
    try:
        split = urlsplit(f"{scheme}://{part}")
        port = split.port
    except ValueError as exc:
        raise InvalidTransportURL(safe, f"bad host {part.rpartition('@')[2]!r}: {exc}") from None
    if not split.hostname:
        raise InvalidTransportURL(safe, f"missing host name in {part.rpartition('@')[2]!r}")
    return Host(
        hostname=split.hostname,
        port=port,
        username=unquote(split.username) if split.username else None,
        password=unquote(split.password) if split.password else None,
    )
