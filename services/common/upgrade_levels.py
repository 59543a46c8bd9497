"""Per-service version pins (``upgrade_levels``), as oslo's ``[upgrade_levels]``.

A pin holds the interface version a service's clients send to another
service, instead of ``version_cap="auto"`` (the lowest version its live
servers advertise). Operators pin while they upgrade, so that nothing is
sent at a version an older node (or a node rolled back) cannot honour, and
remove the pin once every node runs the new release (docs/upgrades.md).

Settings, merged per service (command line > environment > config file)::

    [upgrade_levels]            # config file, for every service
    compute = "1.0"
    --upgrade-level compute=1.0 # command line, repeatable
    RPCLIB_UPGRADE_LEVELS="compute=1.0,conductor=auto"

A value is ``"auto"`` or a version of the interface this code speaks (same
major, not above it); anything else is a :class:`BadUpgradeLevel` naming it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from rpclib.versioning import parse_version

AUTO = "auto"
LOG = logging.getLogger("services.upgrade_levels")


class BadUpgradeLevel(argparse.ArgumentTypeError, ValueError):
    """An upgrade level names an unknown service or a version this code cannot send."""


INTERFACES = {
    "billing": "services.billing.service",
    "compute": "services.compute.rpcapi",
    "conductor": "services.conductor.rpcapi",
    "scheduler": "services.scheduler.manager",
}
"""Where each service's interface version (``VERSION``) is defined: the ceiling of its pins."""


def interface_version(service: str) -> str:
    """The newest version of ``service``'s interface this code speaks.

    Imported on demand, one service at a time: the interface modules import
    services.common, and a compute node must not load billing's ledger (and
    its database driver) to check a pin it does not use.
    """
    version: str = importlib.import_module(INTERFACES[service]).VERSION
    return version


def check(service: str, level: object) -> str:
    """``level`` for ``service`` as it will be used (``auto`` or ``X.Y``), or BadUpgradeLevel."""
    if service not in INTERFACES:
        raise BadUpgradeLevel(
            f"unknown service {service!r} (one of {', '.join(sorted(INTERFACES))})"
        )
    if not isinstance(level, str):  # a TOML number would turn 1.10 into 1.1
        raise BadUpgradeLevel(f'{service}: write the version as a string, e.g. "1.0"')
    text = level.strip()
    if text.lower() == AUTO:
        return AUTO
    try:
        version = parse_version(text)
    except ValueError:
        raise BadUpgradeLevel(
            f"{service}: {level!r} is not a version ('MAJOR.MINOR', e.g. '1.0') or 'auto'"
        ) from None
    newest = parse_version(interface_version(service))
    if not newest.can_honour(version):
        raise BadUpgradeLevel(
            f"{service}: {level!r} is above what this release speaks ({service} {newest}; "
            f"a pin must be {newest.major}.0 to {newest})"
        )
    return str(version)


def parse(value: Any) -> dict[str, str]:
    """``{"compute": "1.0"}``, ``"compute=1.0,conductor=auto"`` or a list of such strings."""
    if isinstance(value, Mapping):
        pairs: Iterable[tuple[Any, Any]] = value.items()
    else:
        items = [value] if isinstance(value, str) else list(value)
        pairs = []
        for item in items:
            for entry in filter(None, (part.strip() for part in str(item).split(","))):
                service, sep, level = entry.partition("=")
                if not sep:
                    raise BadUpgradeLevel(f"{entry!r} is not SERVICE=VERSION (e.g. compute=1.0)")
                pairs.append((service.strip(), level.strip()))
    return {str(service): check(str(service), level) for service, level in pairs}


def cap_for(levels: Mapping[str, str] | None, service: str) -> str:
    """The ``version_cap`` for clients of ``service``: its pin, else ``"auto"``."""
    return (levels or {}).get(service, AUTO)


def describe_caps(levels: Mapping[str, str] | None, services: Iterable[str]) -> str:
    """One line for a service's start log: the cap it uses towards each of ``services``."""
    parts = []
    for service in services:
        level = cap_for(levels, service)
        parts.append(
            f"{service} auto (the lowest version its live servers advertise)"
            if level == AUTO
            else f"{service} pinned at {level} (upgrade_levels)"
        )
    return "version caps: " + "; ".join(parts)


class CapWatch:
    """Logs, per destination, the cap a client sends at whenever it changes.

    An operator follows a rolling upgrade in these lines: with ``auto`` a
    node's cap rises when it comes back on the new release; with a pin it
    stays put until the pin is lifted.
    """

    def __init__(self, service: str, level: str) -> None:
        self.service = service
        self.level = level
        self._seen: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def note(self, where: str, version: str | None) -> None:
        with self._lock:
            if where in self._seen and self._seen[where] == version:
                return
            before = self._seen.get(where, "none")
            self._seen[where] = version
        how = "pinned by upgrade_levels" if self.level != AUTO else "auto"
        LOG.info(
            "%s %s: sending at version cap %s (was %s; %s)",
            self.service,
            where,
            version or "none (no server advertised yet)",
            before or "none",
            how,
        )
