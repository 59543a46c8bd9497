"""Least privilege on etcd: a user and a role per principal, over key ranges of naming.py.

:func:`permissions` derives from every account's :class:`~rpclib.access.Grants`
the key ranges one principal's role needs (``P`` is the URL's prefix, ``p``
the principal; "prefix" means every key starting with it):

- its own keys: ``P/box/p.`` (its boxes: pushes, replies, echo keys) and
  ``P/inbox/p.`` (inbox markers) and ``P/dead/p.`` (the dead letters of
  messages it received, which it counts and trims to ``dead_letter_limit``)
  read-write;
- each queue it consumes: the ``decl`` key, its own ``live`` keys
  (``live/EX/TOPIC/TAIL/p.``), the queue's stored messages and claims
  (``q/EX/TOPIC/TAIL/``, watched) and delivery counters (``n/...``);
  a fanout: its own ``live/EX/TOPIC/f/p.`` keys;
- each advert it publishes: that one key; each topic whose adverts it
  watches: read ``adv/EX/TOPIC/``, read-write its ``h/`` echo keys;
- each topic it sends to: read the routes (``decl/`` and ``live/`` of the
  topic: compares need read access), read-write its own stored copies
  (``q/EX/TOPIC/TAIL/m/p.``, for every queue any account consumes there)
  and those queues' ``decl`` keys (a notifier declares its pools); write
  (never read) the boxes of the principals consuming that topic;
- replies: write the boxes, and read the inbox markers, of the principals
  that call a topic it consumes.

etcd checks every compare and every operation of a transaction, and lets a
key be put with a lease only by a user that may write every key on that
lease; the driver's operations are shaped for exactly these ranges (see
naming.py). :func:`render` prints etcdctl commands, :func:`apply` makes the
same changes through the JSON gateway, idempotently: a user's password is
set, its role ``p@PREFIX`` gets exactly these permissions (others revoked).
Authentication itself (a ``root`` user, ``etcdctl auth enable``) is the
operator's, once per cluster.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from rpclib.access import Account, Grants, check_principal
from rpclib.exceptions import TransportError
from rpclib.transports.base import Address
from rpclib.transports.etcd.client import EtcdClient
from rpclib.transports.etcd.naming import Keys, QueueName, name, prefix_end
from rpclib.transports.etcd.options import parse_options
from rpclib.transports.url import parse_url


class Perm(Enum):
    READ = 1
    WRITE = 2
    READWRITE = 3


@dataclass(frozen=True, order=True)
class KeyRange:
    """One key (``end`` None) or every key starting with ``key`` (``end`` its prefix_end)."""

    key: str
    end: str | None

    @classmethod
    def prefix(cls, key: str) -> KeyRange:
        return cls(key, prefix_end(key))

    @classmethod
    def exact(cls, key: str) -> KeyRange:
        return cls(key, None)


def role_name(principal: str, prefix: str) -> str:
    """The role holding ``principal``'s permissions under ``prefix`` (one per deployment)."""
    return f"{principal}@{prefix.strip('/')}"


def _tail_of(address: Address, group: str | None) -> QueueName | None:
    return None if address.fanout else QueueName.of(address, group)


def permissions(prefix: str, grants: Grants, everyone: Iterable[Grants]) -> dict[KeyRange, Perm]:
    """The key ranges ``grants.principal``'s role needs, given every principal's grants."""
    keys = Keys(prefix)
    me = name(grants.principal) + "."
    everyone = list(everyone)
    out: dict[KeyRange, int] = {}

    def allow(key_range: KeyRange, perm: Perm) -> None:
        out[key_range] = out.get(key_range, 0) | perm.value

    allow(KeyRange.prefix(f"{prefix}box/{me}"), Perm.READWRITE)
    allow(KeyRange.prefix(f"{prefix}inbox/{me}"), Perm.READWRITE)
    allow(KeyRange.prefix(f"{keys.dead_prefix()}{me}"), Perm.READWRITE)

    for consume in grants.consume:
        address = consume.address
        queue = _tail_of(address, consume.group)
        if queue is None:
            live = keys.live_fanout(address.exchange, address.topic, me)
            allow(KeyRange.prefix(live), Perm.READWRITE)
            continue
        allow(KeyRange.exact(keys.decl(queue)), Perm.READWRITE)
        allow(KeyRange.prefix(keys.live(queue, me)), Perm.READWRITE)
        allow(KeyRange.prefix(keys.queue_prefix(queue)), Perm.READWRITE)
        allow(KeyRange.prefix(keys.counter(queue, "")), Perm.READWRITE)

    for address in grants.advertise:
        allow(KeyRange.exact(keys.advert(address)), Perm.READWRITE)
    for exchange, topic in grants.watch:
        adverts = keys.advert_prefix(exchange, topic)
        allow(KeyRange.prefix(adverts), Perm.READ)
        allow(KeyRange.prefix(f"{adverts}h/"), Perm.READWRITE)

    for exchange, topic in grants.send:
        allow(KeyRange.prefix(keys.decl_prefix(exchange, topic)), Perm.READ)
        allow(KeyRange.prefix(keys.live_prefix(exchange, topic)), Perm.READ)
        for other in everyone:
            consumes_here = [
                c
                for c in other.consume
                if (c.address.exchange, c.address.topic) == (exchange, topic)
            ]
            for c in consumes_here:
                queue = _tail_of(c.address, c.group)
                if queue is not None:
                    allow(KeyRange.exact(keys.decl(queue)), Perm.READWRITE)
                    allow(KeyRange.prefix(keys.queue_prefix(queue) + f"m/{me}"), Perm.READWRITE)
            if consumes_here and other.principal != grants.principal:
                them = name(other.principal) + "."
                allow(KeyRange.prefix(f"{prefix}box/{them}"), Perm.WRITE)

    # RPC queues (server, topic, fanout) answer calls; listener pools (a group) never reply
    served = {(c.address.exchange, c.address.topic) for c in grants.consume if c.group is None}
    for other in everyone:
        if other.principal != grants.principal and served & set(other.send):
            them = name(other.principal) + "."
            allow(KeyRange.prefix(f"{prefix}box/{them}"), Perm.WRITE)
            allow(KeyRange.prefix(f"{prefix}inbox/{them}"), Perm.READ)
    return {key_range: Perm(value) for key_range, value in sorted(out.items())}


def _plan(
    admin_url: str, accounts: list[Account]
) -> tuple[str, list[tuple[Account, str, dict[KeyRange, Perm]]]]:
    prefix = parse_options(parse_url(admin_url)).prefix
    names = [check_principal(a.access.principal) for a in accounts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"principal(s) given twice: {twice}")
    if "root" in names:
        raise ValueError("principal 'root' is etcd's superuser: give the service another name")
    everyone = [a.access.grants() for a in accounts]
    plan = [
        (account, role_name(grants.principal, prefix), permissions(prefix, grants, everyone))
        for account, grants in zip(accounts, everyone, strict=True)
    ]
    return prefix, plan


def render(admin_url: str, accounts: list[Account]) -> str:
    """etcdctl commands creating each account's user and role (what :func:`apply` does)."""
    prefix, plan = _plan(admin_url, accounts)
    q = shlex.quote
    lines = [
        f"# rpclib least-privilege accounts under key prefix {prefix}",
        "# (run with etcdctl --user root:...; once per cluster: etcdctl user add root,",
        "#  etcdctl user grant-role root root, etcdctl auth enable)",
    ]
    for account, role, perms in plan:
        user = account.access.principal
        lines.append(f"etcdctl user add {q(user)} --new-user-password={q(account.password)}")
        lines.append(f"etcdctl role add {q(role)}")
        for key_range, perm in perms.items():
            words = ["etcdctl role grant-permission", q(role), perm.name.lower(), q(key_range.key)]
            if key_range.end is not None:
                words.append(q(key_range.end))
            lines.append(" ".join(words))
        lines.append(f"etcdctl user grant-role {q(user)} {q(role)}")
    return "\n".join(lines) + "\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("latin-1")).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode("latin-1")


def apply(admin_url: str, accounts: list[Account]) -> None:
    """Create or update each account's user and role through ``admin_url`` (idempotent)."""
    _, plan = _plan(admin_url, accounts)
    client = EtcdClient(parse_options(parse_url(admin_url)), admin_url)
    try:
        client.authenticate()
        for account, role, perms in plan:
            _apply_one(client, account.access.principal, account.password, role, perms)
    finally:
        client.close()


def _exists(exc: TransportError) -> bool:
    return "already exists" in str(exc)


def _apply_one(
    client: EtcdClient, user: str, password: str, role: str, perms: dict[KeyRange, Perm]
) -> None:
    try:
        client.call("auth/user/add", {"name": user, "password": password})
    except TransportError as exc:
        if not _exists(exc):
            raise
        client.call("auth/user/changepw", {"name": user, "password": password})
    try:
        client.call("auth/role/add", {"name": role})
    except TransportError as exc:
        if not _exists(exc):
            raise
    have = client.call("auth/role/get", {"role": role}).get("perm", [])
    wanted = {(r.key, r.end or ""): p for r, p in perms.items()}
    for perm in have:
        key, end = _unb64(perm.get("key", "")), _unb64(perm.get("range_end", ""))
        kind = Perm[perm.get("permType", "READ")]
        if wanted.get((key, end)) is not kind:
            payload = {"role": role, "key": _b64(key)}
            if end:
                payload["range_end"] = _b64(end)
            client.call("auth/role/revoke", payload)
    have_set = {
        (_unb64(p.get("key", "")), _unb64(p.get("range_end", "")), p.get("permType", "READ"))
        for p in have
    }
    for (key, end), kind in wanted.items():
        if (key, end, kind.name) in have_set:
            continue
        grant = {"permType": kind.name, "key": _b64(key)}
        if end:
            grant["range_end"] = _b64(end)
        client.call("auth/role/grant", {"name": role, "perm": grant})
    client.call("auth/user/grant", {"user": user, "role": role})
