"""Least privilege: what one principal needs on the bus, derived from rpclib's addressing.

An :class:`Access` says, in rpclib's own terms, what a principal does: the
targets it serves, the topics it calls or casts to, the notification topics
it emits and the listener pools it reads. :meth:`Access.grants` turns that
into driver-level :class:`Grants` (the addresses it consumes from, the
topics it sends to, the adverts it writes and reads), which each transport
renders into its broker's own permissions:

- ``memory://``: :func:`rpclib.transports.memory.add_account` takes ``grants=``
  and the bus enforces them (``rpclib.transports.memory_access``);
- ``rabbit://`` and ``amqp1://``: RabbitMQ configure/write/read regexes and
  topic permissions (``rpclib.transports.rabbit.access``);
- ``etcd://``: etcd roles over key ranges (``rpclib.transports.etcd.access``).

Every principal may also always use its own reply inbox and send dead
letters, and a principal that serves something may send replies (on
``rabbit://`` and ``amqp1://`` only those; a pure caller writes no reply);
transports name a principal's private queues (inboxes,
fanout and advert queues) with the principal first, so those can be granted
by prefix. That is why principals used here are restricted to letters,
digits, ``_`` and ``-``: no ``.`` or ``/`` that a prefix match could cross.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rpclib.notifier import PRIORITIES
from rpclib.target import Target
from rpclib.transports.base import Address

PRINCIPAL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_EXCHANGE = "rpclib"


def check_principal(principal: str) -> str:
    """Return ``principal`` or raise ValueError naming why it cannot be one."""
    if type(principal) is not str or not PRINCIPAL.match(principal):
        raise ValueError(
            f"principal {principal!r}: use 1-64 letters, digits, '_' or '-' "
            "(transports grant a principal's own queues by name prefix)"
        )
    return principal


@dataclass(frozen=True)
class Consume:
    """Consume from ``address`` (with consumer ``group``, or a fanout's private queue)."""

    address: Address
    group: str | None = None


@dataclass(frozen=True)
class Grants:
    """What a transport must allow one principal, in driver terms.

    ``send`` holds ``(exchange, topic)`` pairs: the topic's shared queue, any
    server of it and its fanout. ``advertise`` holds the server addresses
    whose adverts it writes; ``watch`` the ``(exchange, topic)`` adverts it
    reads. Its own inbox and dead letters are implied for everyone; replies
    for those that consume (serve) something.
    """

    principal: str
    consume: frozenset[Consume] = frozenset()
    send: frozenset[tuple[str, str]] = frozenset()
    advertise: frozenset[Address] = frozenset()
    watch: frozenset[tuple[str, str]] = frozenset()

    def may_consume(self, address: Address, group: str | None) -> bool:
        return Consume(address, group) in self.consume

    def may_send(self, address: Address) -> bool:
        return (address.exchange, address.topic) in self.send

    def may_advertise(self, address: Address) -> bool:
        return address in self.advertise

    def may_watch(self, exchange: str, topic: str) -> bool:
        return (exchange, topic) in self.watch


@dataclass(frozen=True)
class Access:
    """What a principal does, in rpclib's terms; build with the chained methods.

    >>> compute = (Access("compute-1")
    ...     .serve(Target(topic="compute", server="compute-1"))
    ...     .call(Target(topic="conductor")))
    """

    principal: str
    exchange: str = DEFAULT_EXCHANGE
    serves: tuple[Target, ...] = ()
    calls: tuple[Target, ...] = ()
    notifies: tuple[tuple[str, tuple[str, ...]], ...] = ()
    listens: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        check_principal(self.principal)

    def serve(self, target: Target) -> Access:
        """Run an RPCServer on ``target`` (topic and server): its queues, fanout and advert."""
        if target.topic is None or target.server is None:
            raise ValueError(f"serve() needs a target with a topic and a server, not {target}")
        return replace(self, serves=(*self.serves, target))

    def call(self, target: Target) -> Access:
        """Call, cast and fan out to ``target``'s topic, and read its adverts."""
        if target.topic is None:
            raise ValueError(f"call() needs a target with a topic, not {target}")
        return replace(self, calls=(*self.calls, target))

    def notify(self, topic: str, priorities: Iterable[str] = PRIORITIES) -> Access:
        """Emit notifications on ``topic`` at ``priorities``."""
        return replace(self, notifies=(*self.notifies, (topic, _priorities(priorities))))

    def listen(self, topic: str, pool: str, priorities: Iterable[str] = PRIORITIES) -> Access:
        """Read ``topic``'s notifications as listener pool ``pool``."""
        return replace(self, listens=(*self.listens, (topic, pool, _priorities(priorities))))

    def grants(self) -> Grants:
        """The driver-level grants this access needs (see :class:`Grants`)."""
        consume: set[Consume] = set()
        send: set[tuple[str, str]] = set()
        advertise: set[Address] = set()
        watch: set[tuple[str, str]] = set()
        for t in self.serves:
            ex, topic = t.exchange or self.exchange, t.topic
            assert topic is not None
            consume.add(Consume(Address(ex, topic, server=t.server)))
            consume.add(Consume(Address(ex, topic)))
            consume.add(Consume(Address(ex, topic, fanout=True)))
            advertise.add(Address(ex, topic, server=t.server))
        for t in self.calls:
            ex, topic = t.exchange or self.exchange, t.topic
            assert topic is not None
            send.add((ex, topic))
            watch.add((ex, topic))
        for topic, priorities in self.notifies:
            send.update((self.exchange, f"{topic}.{p}") for p in priorities)
        for topic, pool, priorities in self.listens:
            consume.update(
                Consume(Address(self.exchange, f"{topic}.{p}"), pool) for p in priorities
            )
        return Grants(
            self.principal,
            frozenset(consume),
            frozenset(send),
            frozenset(advertise),
            frozenset(watch),
        )


def _priorities(priorities: Iterable[str]) -> tuple[str, ...]:
    out = tuple(priorities)
    unknown = [p for p in out if p not in PRIORITIES]
    if unknown or not out:
        raise ValueError(
            f"notification priorities must be among {PRIORITIES}, not {unknown or out}"
        )
    return out


# --- spec files -------------------------------------------------------------------


def _target(text: str, *, server_required: bool) -> Target:
    topic, _, server = text.partition("@")
    if not topic or (server_required and not server):
        form = "TOPIC@SERVER" if server_required else "TOPIC or TOPIC@SERVER"
        raise ValueError(f"{text!r} is not {form}")
    return Target(topic=topic, server=server or None)


def _strings(where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key} must be a list of strings")
    return list(value)


def access_from_mapping(entry: Mapping[str, Any], exchange: str = DEFAULT_EXCHANGE) -> Access:
    """One ``[[principal]]`` table of a spec file (see :func:`load_spec`)."""
    known = {"name", "serve", "call", "notify", "listen"}
    name = entry.get("name")
    where = f"principal {name!r}"
    if not isinstance(name, str):
        raise ValueError('every [[principal]] needs name = "..."')
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {sorted(known)})")
    access = Access(name, exchange=exchange)
    for text in _strings(where, "serve", entry.get("serve", [])):
        access = access.serve(_target(text, server_required=True))
    for text in _strings(where, "call", entry.get("call", [])):
        access = access.call(_target(text, server_required=False))
    for topic in _strings(where, "notify", entry.get("notify", [])):
        access = access.notify(topic)
    for text in _strings(where, "listen", entry.get("listen", [])):
        topic, _, pool = text.partition("#")
        if not topic or not pool:
            raise ValueError(f"{where}: listen entry {text!r} is not TOPIC#POOL")
        access = access.listen(topic, pool)
    return access


def load_spec(path: Path, exchange: str = DEFAULT_EXCHANGE) -> list[Access]:
    """Read a TOML spec: ``[[principal]]`` tables with name, serve, call, notify, listen.

    ::

        [[principal]]
        name = "compute-1"
        serve = ["compute@compute-1"]     # TOPIC@SERVER
        call = ["conductor"]              # TOPIC
        notify = []                       # notification TOPICs
        listen = []                       # TOPIC#POOL
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"access spec {path}: {exc}") from None
    entries = data.get("principal", [])
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"access spec {path}: no [[principal]] tables")
    out = [access_from_mapping(e, exchange) for e in entries]
    names = [a.principal for a in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"access spec {path}: principal(s) named twice: {duplicated}")
    return out


# --- provisioning -------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A principal's access and the secret it logs in with."""

    access: Access
    password: str

    def __repr__(self) -> str:
        return f"Account({self.access.principal!r}, password=***)"


_ACCESS_MODULES = {
    "memory": "rpclib.transports.memory_access",
    "rabbit": "rpclib.transports.rabbit.access",
    "rabbits": "rpclib.transports.rabbit.access",
    "amqp1": "rpclib.transports.amqp1.access",
    "amqps": "rpclib.transports.amqp1.access",
    "etcd": "rpclib.transports.etcd.access",
    "etcds": "rpclib.transports.etcd.access",
}
"""Each module has ``render(admin_url, accounts) -> str`` and ``apply(admin_url, accounts)``,
and may have ``remove(admin_url, accesses) -> Removed`` (:func:`deprovision`)."""


def _module(admin_url: str) -> Any:
    import importlib

    from rpclib.transports.url import parse_url

    scheme = parse_url(admin_url).scheme
    if scheme not in _ACCESS_MODULES:
        raise ValueError(
            f"no least-privilege accounts for {scheme}:// "
            f"(known: {', '.join(sorted(_ACCESS_MODULES))})"
        )
    return importlib.import_module(_ACCESS_MODULES[scheme])


def login_url(admin_url: str, account: Account) -> str:
    """The URL ``account`` logs in with: ``admin_url``'s hosts, vhost and connection
    options, ``account``'s credentials, and none of the admin-only options its
    transport's access module names (``ADMIN_OPTIONS``, e.g. ``management``)."""
    drop = frozenset(getattr(_module(admin_url), "ADMIN_OPTIONS", ()))
    return with_credentials(admin_url, account.access.principal, account.password, drop=drop)


def with_credentials(
    url: str, user: str, password: str, *, drop: frozenset[str] = frozenset()
) -> str:
    """``url`` logging in as ``user`` on every host of its failover list, without the
    query options in ``drop``; everything else kept as written."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a transport URL: {url!r}")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    creds = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    hosts = [creds + part.rpartition("@")[2] for part in netloc.split(",")] if netloc else [creds]
    kept = [p for p in query.split("&") if p and p.partition("=")[0] not in drop]
    tail = "?" + "&".join(kept) if kept else ""
    return f"{scheme}://{','.join(hosts)}{slash}{path}{tail}"


def render(admin_url: str, accounts: Iterable[Account]) -> str:
    """What :func:`provision` would do, as commands an operator can read and run."""
    return str(_module(admin_url).render(admin_url, list(accounts)))


def provision(admin_url: str, accounts: Iterable[Account]) -> None:
    """Create or update each account with exactly its grants, through ``admin_url``.

    Idempotent: running it again with the same accounts changes nothing; a
    changed password or access replaces the old one.
    """
    _module(admin_url).apply(admin_url, list(accounts))


@dataclass(frozen=True)
class Removed:
    """What :func:`deprovision` removed: broker accounts and durable queues, by name."""

    accounts: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{len(self.accounts)} account(s), {len(self.queues)} queue(s)"


def deprovision(admin_url: str, accesses: Iterable[Access]) -> Removed:
    """Remove the accounts of ``accesses`` and the durable queues they consumed.

    The undoing of :func:`provision` once the principals' services have
    stopped; shared exchanges and the dead-letter queue stay. Accounts or
    queues already gone are skipped. A transport whose access module has no
    ``remove`` raises ValueError saying so.
    """
    module = _module(admin_url)
    remove = getattr(module, "remove", None)
    if remove is None:
        from rpclib.transports.url import parse_url

        raise ValueError(
            f"{parse_url(admin_url).scheme}:// cannot remove accounts yet: remove them "
            "with the broker's own tools"
        )
    removed = remove(admin_url, list(accesses))
    assert isinstance(removed, Removed)
    return removed
