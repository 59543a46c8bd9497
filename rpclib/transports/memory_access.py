"""Least-privilege accounts on a ``memory://`` bus (``rpclib.access`` for ``memory://NAME``).

:func:`apply` creates or updates one bus account per :class:`~rpclib.access.Account`,
holding exactly the grants its :class:`~rpclib.access.Access` derives; the
bus enforces them (:mod:`rpclib.transports.memory_grants`). The admin URL
names the bus only (``memory://NAME``; ``memory://`` is the default bus) and
takes no credentials: whoever runs in the process owns its buses.
"""

from __future__ import annotations

from collections.abc import Sequence

from rpclib.access import Access, Account, Removed
from rpclib.exceptions import InvalidTransportURL
from rpclib.transports import memory
from rpclib.transports.url import parse_url

__all__ = ["apply", "remove", "render"]


def _bus(admin_url: str) -> str:
    url = parse_url(admin_url)
    if url.scheme != "memory":
        raise InvalidTransportURL(admin_url, "memory accounts need a memory:// admin URL")
    if url.options:
        raise InvalidTransportURL(admin_url, "the admin URL names a bus and takes no options")
    if url.hosts and (url.hosts[0].username or url.hosts[0].password):
        raise InvalidTransportURL(admin_url, "the admin URL of a memory bus takes no credentials")
    return memory.bus_name(url)


def render(admin_url: str, accounts: Sequence[Account]) -> str:
    """The accounts and grants :func:`apply` would set, one block per principal."""
    bus = _bus(admin_url)
    lines = [f"# memory bus {bus!r}: {len(accounts)} account(s); passwords not shown"]
    for account in accounts:
        grants = account.access.grants()
        lines.append(f"account {grants.principal}")
        for consume in sorted(grants.consume, key=str):
            group = "" if consume.group is None else f" [group {consume.group}]"
            lines.append(f"  consume   {consume.address}{group}")
        for exchange, topic in sorted(grants.send):
            lines.append(f"  send      {exchange}/{topic} (topic, servers, fanout)")
        for address in sorted(grants.advertise, key=str):
            lines.append(f"  advertise {address}")
        for exchange, topic in sorted(grants.watch):
            lines.append(f"  watch     {exchange}/{topic}")
        lines.append("  always    own inboxes, replies, dead letters")
    return "\n".join(lines) + "\n"


def apply(admin_url: str, accounts: Sequence[Account]) -> None:
    """Create or update each account on the bus with its password and exactly its grants."""
    bus = _bus(admin_url)
    names = [a.access.principal for a in accounts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"principal(s) given twice: {twice}")
    for account in accounts:
        grants = account.access.grants()
        memory.add_account(bus, grants.principal, account.password, grants=grants)


def remove(admin_url: str, accesses: Sequence[Access]) -> Removed:
    """Remove each access's account from the bus; an account already gone is skipped.
    (The bus's queues live in this process and go with it.)"""
    bus = _bus(admin_url)
    removed = []
    for access in accesses:
        try:
            memory.remove_account(bus, access.principal)
        except KeyError:
            continue
        removed.append(access.principal)
    return Removed(accounts=tuple(removed))
