"""Transport drivers, found by URL scheme.

Built-in drivers are listed here; third-party drivers register under the
``rpclib.transports`` entry-point group (see :mod:`rpclib.transports.base`).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from rpclib.exceptions import TransportError, UnknownTransport
from rpclib.transports.base import Driver
from rpclib.transports.url import TransportURL, parse_url

ENTRY_POINT_GROUP = "rpclib.transports"

_BUILTIN: dict[str, str] = {
    "memory": "rpclib.transports.memory:MemoryDriver",
    "rabbit": "rpclib.transports.rabbit:RabbitDriver",
    "rabbits": "rpclib.transports.rabbit:RabbitDriver",
}


@lru_cache(maxsize=1)
def _registered() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def available_schemes() -> list[str]:
    """Every URL scheme a driver is registered for."""
    return sorted(_registered())


def driver_class(scheme: str) -> type[Driver]:
    """The driver class for ``scheme``; UnknownTransport names the scheme and the known ones."""
    registered = _registered()
    target = registered.get(scheme)
    if target is None:
        raise UnknownTransport(scheme, list(registered))
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TransportError(
            f"the {scheme!r} transport needs an optional dependency that is not installed "
            f"({exc}); install rpclib with the matching extra, e.g. pip install 'rpclib[{scheme}]'"
        ) from exc
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TransportError(f"{target} registered for {scheme!r} is not an rpclib Driver")
    return cls


def load_driver(url: str | TransportURL) -> Driver:
    """Parse ``url`` and construct its driver."""
    parsed = parse_url(url) if isinstance(url, str) else url
    return driver_class(parsed.scheme)(parsed)


__all__ = ["ENTRY_POINT_GROUP", "available_schemes", "driver_class", "load_driver"]
