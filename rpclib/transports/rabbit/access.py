"""Least-privilege RabbitMQ accounts for ``rabbit://``, derived from the driver's names.

For each :class:`~rpclib.access.Account` this makes a broker user with that
password and, on the admin URL's vhost, exactly what its
:class:`~rpclib.access.Grants` need (names as in docs/transports/rabbit.md;
``X`` is an exchange, ``T`` a topic, ``S`` a server, ``P`` the principal,
``Q`` = ``rpclib.queues``, the exchange of everything addressed to one queue):

==========================  ===================================================
operation (driver)          permission needed (RabbitMQ's access-control table)
==========================  ===================================================
queue.declare (own queues)  configure on the queue: ``X.T@S``, ``X.T``,
                            ``X.T#G`` (each with ``.live``) it consumes, and its
                            private ``rpclib.reply.P.*``, ``X.T.fanout.P.*``,
                            ``X.adverts.P.*`` queues
queue.bind                  write on the queue, read on the exchange, and for
                            topic exchanges a *topic* read permission on the
                            binding key: only the keys of its own queues on
                            ``X``; on ``Q`` only its own queues' keys (each
                            queue it owns is bound to ``Q`` by its name with
                            ``.`` as ``*``, naming.queue_key); on
                            ``X.adverts`` ``T.@.#`` of the topics it watches,
                            ``T.sync`` of those it advertises
basic.consume / get         read on the queue: only its own queues
basic.publish               write on the exchange: ``X`` and ``X.T.fanout`` for
                            the topics it sends to, ``X.adverts``, ``Q``; never
                            ``amq.default``. Topic write permissions on the
                            routing key: on ``X`` only ``T``/``T@*`` (``.live``)
                            of the topics it sends to; on ``Q`` the dead-letter
                            queue, its own consumed queues (requeued copies),
                            and routed inboxes ``rpclib*reply*…*q`` (replies)
                            only if it serves something; on ``X.adverts``
                            ``T.@.S`` of exactly the servers it advertises,
                            ``T.sync`` of the topics it watches
exchange.declare            none: :func:`apply` declares every exchange (and the
                            dead-letter queue, bound to ``Q``) as the admin; the
                            driver then finds them with a passive declare, which
                            needs no permission. No account can delete a shared
                            exchange.
==========================  ===================================================

A user with no topic permission on a topic exchange may use any routing key,
so every account gets one on ``X``, ``X.adverts`` and ``Q``, matching
nothing if it needs nothing there.

So an account can put a message only into its own queues, the queues of the
topics and servers it may send to, the dead-letter queue, and (a server)
callers' reply inboxes; it can advertise and withdraw only as the servers it
serves. What remains open (docs/security.md): a server can write into any
caller's inbox (a forged reply to a call in flight is believed only if it
matches a waiting call's id, and carries the server's user); any account can
write dead letters (the queue is bounded).

``?old_peers=true`` on the admin URL (a rolling upgrade from the release
before ``Q``, docs/transports/rabbit.md) adds back write on ``amq.default``
and adverts keyed by the topic alone, i.e. the old gaps, until it is applied
again without it.

:func:`apply` sets users and permissions through the management HTTP API
(:mod:`rpclib.transports.rabbitmq_management`) when the admin URL has
``?management=http://HOST:PORT`` (its user and password log in), else through
``rabbitmqctl`` (``?rabbitmqctl=PATH``, default the one on PATH; ``?node=NAME``
for ``-n``); it declares exchanges over AMQP with the admin URL's credentials.
:func:`render` prints the same as commands.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.base import Address
from rpclib.transports.rabbit import naming
from rpclib.transports.rabbitmq_management import ManagementClient, Permissions, TopicPermission
from rpclib.transports.url import TransportURL, parse_url

if TYPE_CHECKING:
    from rpclib.access import Access, Account, Grants, Removed
    from rpclib.transports.rabbit.connection import BrokerConnection
    from rpclib.transports.rabbit.options import RabbitOptions

ADMIN_OPTIONS: Final = frozenset({"management", "rabbitmqctl", "node"})
"""Options of the admin URL that say how to reach the broker's administration."""
NOTHING: Final = "^$"
DEFAULT_EXCHANGE_PERMISSION: Final = "amq.default"
"""RabbitMQ checks publishes to the default exchange ("") against this name."""

Runner = Callable[[Sequence[str]], str]
"""Runs ``rabbitmqctl`` with these arguments; returns its output, raises on failure."""


def _alternatives(patterns: Iterable[str]) -> str:
    """One anchored regex matching any of ``patterns`` (each already a regex), or nothing."""
    unique = sorted(set(patterns))
    if not unique:
        return NOTHING
    return "^(" + "|".join(unique) + ")$"


def _name(text: str) -> str:
    return re.escape(text)


def _queues(address: Address, group: str | None) -> list[str]:
    """Regexes of the durable and ``.live`` queues of a subscription to ``address``."""
    base = _name(naming.queue_name(address, group))
    return [base, base + _name(naming.LIVE_SUFFIX)]


def _keys(address: Address) -> list[str]:
    return [_name(naming.routing_key(address)), _name(naming.routing_key(address, live=True))]


def _private(prefix: str, principal: str) -> str:
    """A private queue of ``principal`` under ``prefix`` (principals hold no ``.``)."""
    return _name(f"{prefix}{principal}.") + ".+"


def _private_key(prefix: str, principal: str) -> str:
    """:func:`_private`'s queues as keys of ``rpclib.queues`` (naming.queue_key)."""
    return _name(naming.queue_key(f"{prefix}{principal}.")) + ".+"


def _queue_keys(address: Address, group: str | None) -> list[str]:
    """:func:`_queues` as keys of ``rpclib.queues``."""
    base = naming.queue_name(address, group)
    return [_name(naming.queue_key(q)) for q in (base, base + naming.LIVE_SUFFIX)]


def permissions(grants: Grants, *, old_peers: bool = False) -> Permissions:
    """What ``grants`` needs on the broker; see the module docstring.

    ``old_peers`` adds what drivers of the release before ``rpclib.queues``
    need while they share the vhost (a rolling upgrade): write on
    ``amq.default`` and adverts keyed by the topic alone.
    """
    p = grants.principal
    inboxes = _private(naming.REPLY_PREFIX, p)
    configure: set[str] = {inboxes}
    write: set[str] = {inboxes, _name(naming.QUEUES_EXCHANGE)}
    read: set[str] = {inboxes, _name(naming.QUEUES_EXCHANGE)}
    inbox_keys = _private_key(naming.REPLY_PREFIX, p)
    own_keys: set[str] = set()
    """Keys of the queues it consumes on rpclib.queues: it binds them and requeues into them."""
    dead_letters = _name(naming.queue_key(naming.DEAD_LETTER_QUEUE))
    topic_write: dict[str, set[str]] = {naming.QUEUES_EXCHANGE: {dead_letters}}
    topic_read: dict[str, set[str]] = {naming.QUEUES_EXCHANGE: set()}
    exchanges: set[str] = set()
    if old_peers:
        write.add(_name(DEFAULT_EXCHANGE_PERMISSION))

    def topic(exchange: str) -> None:
        exchanges.add(exchange)
        topic_write.setdefault(exchange, set())
        topic_read.setdefault(exchange, set())
        topic_write.setdefault(naming.adverts_exchange(exchange), set())
        topic_read.setdefault(naming.adverts_exchange(exchange), set())

    serves = False
    for consume in grants.consume:
        address = consume.address
        topic(address.exchange)
        serves = serves or address.server is not None
        if address.fanout:
            fanout = naming.fanout_exchange(address)
            queue = _private(fanout + ".", p)
            configure.add(queue)
            write.add(queue)
            read.update((queue, _name(fanout)))
            own_keys.add(_private_key(fanout + ".", p))
            continue
        for queue in _queues(address, consume.group):
            configure.add(queue)
            write.add(queue)
            read.add(queue)
        own_keys.update(_queue_keys(address, consume.group))
        read.add(_name(address.exchange))
        topic_read[address.exchange].update(_keys(address))
    topic_read[naming.QUEUES_EXCHANGE] |= own_keys | {inbox_keys}
    topic_write[naming.QUEUES_EXCHANGE] |= own_keys  # requeued copies (none into an inbox)
    if serves:
        # Replies to any caller's routed inbox (which queue holds that key is
        # up to its owner: only it may bind its own inbox's name).
        topic_write[naming.QUEUES_EXCHANGE].add(
            _name(naming.queue_key(naming.REPLY_PREFIX))
            + "[^*]+\\*.+"
            + _name(naming.queue_key(naming.ROUTED_INBOX_SUFFIX))
        )
    for exchange, name in grants.send:
        topic(exchange)
        write.update((_name(exchange), _name(naming.fanout_exchange(Address(exchange, name)))))
        server_key = _name(f"{name}@") + "[^@#*]+"
        live = _name(naming.LIVE_SUFFIX)
        topic_write[exchange].update(
            (_name(name), _name(name) + live, server_key, server_key + live)
        )
    adverts_queues: set[str] = set()
    for address in grants.advertise:
        topic(address.exchange)
        assert address.server is not None
        adverts = naming.adverts_exchange(address.exchange)
        adverts_queues.add(adverts)
        topic_write[adverts].add(_name(naming.advert_key(address.topic, address.server)))
        topic_read[adverts].add(_name(naming.sync_key(address.topic)))
        if old_peers:
            topic_write[adverts].add(_name(address.topic))
    for exchange, name in grants.watch:
        topic(exchange)
        adverts = naming.adverts_exchange(exchange)
        adverts_queues.add(adverts)
        topic_write[adverts].add(_name(naming.sync_key(name)))
        topic_read[adverts].add(_name(naming.advert_binding(name)))
        if old_peers:
            topic_read[adverts].add(_name(name))
    for adverts in adverts_queues:
        queue = _private(adverts + ".", p)
        configure.add(queue)
        write.update((queue, _name(adverts)))
        read.update((queue, _name(adverts)))
    topics = tuple(
        TopicPermission(
            exchange, _alternatives(topic_write[exchange]), _alternatives(topic_read[exchange])
        )
        for exchange in sorted(topic_write)
    )
    return Permissions(
        p, _alternatives(configure), _alternatives(write), _alternatives(read), topics
    )


def exchanges_of(accounts: Iterable[Account]) -> list[tuple[str, str]]:
    """(name, type) of every exchange the accounts use: declared by :func:`apply`."""
    found: set[tuple[str, str]] = set()
    for account in accounts:
        found.add((naming.QUEUES_EXCHANGE, "topic"))
        grants = account.access.grants()
        topics = {(c.address.exchange, c.address.topic) for c in grants.consume}
        topics |= set(grants.send)
        topics |= {(a.exchange, a.topic) for a in grants.advertise} | set(grants.watch)
        for exchange, name in topics:
            found.add((exchange, "topic"))
            found.add((naming.adverts_exchange(exchange), "topic"))
            found.add((naming.fanout_exchange(Address(exchange, name)), "fanout"))
    return sorted(found)


# --- the admin URL ---------------------------------------------------------------------


@dataclass(frozen=True)
class Admin:
    """Where and how to administer: the vhost, the AMQP URL, and the management API or CLI."""

    vhost: str
    amqp_url: str
    """The admin URL without the admin options: the driver's own URL syntax."""
    management: str | None
    rabbitmqctl: str
    node: str | None
    user: str
    password: str
    old_peers: bool = False
    """``?old_peers=true``: also grant what the release before ``rpclib.queues`` needs
    (a rolling upgrade). Not an admin-only option: login URLs keep it, so the
    drivers also use the old paths (rabbit/options.py)."""


def pool_queues_of(accounts: Iterable[Account]) -> list[tuple[str, str, str]]:
    """(queue, exchange, routing key) of every listener pool the accounts read.

    Declared and bound by :func:`apply` as the admin, so that a notifier whose
    account may only send there finds its listeners' queues already kept.
    """
    found = set()
    for account in accounts:
        for consume in account.access.grants().consume:
            if consume.group is not None:
                address = consume.address
                found.add(
                    (
                        naming.queue_name(address, consume.group),
                        address.exchange,
                        naming.routing_key(address),
                    )
                )
    return sorted(found)


def admin_of(admin_url: str) -> Admin:
    """Read the admin URL; InvalidTransportURL names a bad option."""
    url = parse_url(admin_url)
    if url.scheme not in ("rabbit", "rabbits"):
        raise InvalidTransportURL(str(url), f"scheme {url.scheme!r} is not rabbit or rabbits")
    management = url.option("management")
    if management is not None:
        parts = urllib.parse.urlsplit(management)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise InvalidTransportURL(
                str(url),
                f"option management={management!r} must be the management API's base URL, "
                "e.g. http://127.0.0.1:15672",
            )
        management = management.rstrip("/")
    node = url.option("node")
    if node is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+@[A-Za-z0-9_.\-]+", node):
        raise InvalidTransportURL(str(url), f"option node={node!r} is not NAME@HOST")
    ctl = url.option("rabbitmqctl") or "rabbitmqctl"
    rest = {k: v for k, v in url.options.items() if k not in ADMIN_OPTIONS}
    amqp_url = _without_options(url, rest)
    host = url.hosts[0] if url.hosts else None
    user = (host.username if host and host.username is not None else None) or "guest"
    password = (host.password if host and host.password is not None else None) or "guest"
    return Admin(
        url.virtual_host or "/",
        amqp_url,
        management,
        ctl,
        node,
        user,
        password,
        url.bool_option("old_peers", False),
    )


def _without_options(url: TransportURL, options: dict[str, str]) -> str:
    base = url.raw.partition("?")[0]
    return base + ("?" + urllib.parse.urlencode(options) if options else "")


# --- render ------------------------------------------------------------------------------


def _ctl(args: Sequence[str]) -> str:
    return "rabbitmqctl " + " ".join(shlex.quote(a) for a in args)


def commands(admin: Admin, accounts: Sequence[Account]) -> list[list[str]]:
    """The ``rabbitmqctl`` arguments that set the accounts' permissions (after their users)."""
    out: list[list[str]] = []
    for account in accounts:
        perms = permissions(account.access.grants(), old_peers=admin.old_peers)
        out.append(
            [
                "set_permissions",
                "-p",
                admin.vhost,
                perms.user,
                perms.configure,
                perms.write,
                perms.read,
            ]
        )
        out.append(["clear_topic_permissions", "-p", admin.vhost, perms.user])
        for exchange, write, read in perms.topics:
            out.append(
                ["set_topic_permissions", "-p", admin.vhost, perms.user, exchange, write, read]
            )
    return out


def render(admin_url: str, accounts: list[Account]) -> str:
    """The rabbitmqctl commands :func:`apply` amounts to. It holds the passwords: keep it secret."""
    admin = admin_of(admin_url)
    lines = [f"# rabbit:// accounts on vhost {admin.vhost!r}"]
    lines.append("# exchanges and the dead-letter queue, declared over AMQP by the admin:")
    for name, kind in exchanges_of(accounts):
        lines.append(f"#   {kind} exchange {name} (durable)")
    by_name = f"and to {naming.QUEUES_EXCHANGE} by its name"
    lines.append(f"#   queue {naming.DEAD_LETTER_QUEUE} (durable, bounded), bound {by_name}")
    for name, exchange, key in pool_queues_of(accounts):
        lines.append(
            f"#   queue {name} (durable, listener pool), bound to {exchange} by {key} {by_name}"
        )
    for account in accounts:
        user = account.access.principal
        lines.append(
            f"rabbitmqctl add_user -- {shlex.quote(user)} {shlex.quote(account.password)} || "
            f"rabbitmqctl change_password -- {shlex.quote(user)} {shlex.quote(account.password)}"
        )
    lines.extend(_ctl(args) for args in commands(admin, accounts))
    return "\n".join(lines) + "\n"


# --- apply -------------------------------------------------------------------------------


def apply(admin_url: str, accounts: list[Account], *, run: Runner | None = None) -> None:
    """Create or update each account with exactly its permissions; idempotent.

    ``run`` replaces how ``rabbitmqctl`` is invoked (tests pass their private
    node's); ignored when the admin URL names a management API.
    """
    admin = admin_of(admin_url)
    _check_unique(accounts)
    if admin.management is not None:
        api = ManagementClient(admin.management, admin.user, admin.password, timeout=30)
        api.ensure_vhost(admin.vhost, admin.user)
        for account in accounts:
            api.put_user(account.access.principal, account.password)
            api.set_permissions(
                admin.vhost, permissions(account.access.grants(), old_peers=admin.old_peers)
            )
    else:
        ctl = run or _cli(admin)
        _ensure_vhost_cli(ctl, admin.vhost, admin.user)
        users = set(ctl(["list_users", "-q", "--no-table-headers"]).split())
        for account in accounts:
            user, password = account.access.principal, account.password
            if user in users:
                ctl(["change_password", "--", user, password])
            else:
                ctl(["add_user", "--", user, password])
        for args in commands(admin, accounts):
            ctl(args)
    declare_shared(admin, accounts)


def _check_unique(accounts: Sequence[Account]) -> None:
    names = [a.access.principal for a in accounts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"principal(s) given twice: {twice}")


def _cli(admin: Admin) -> Runner:
    program = shutil.which(admin.rabbitmqctl)
    if program is None:
        raise RuntimeError(
            f"{admin.rabbitmqctl} not found: install RabbitMQ's CLI, or give the admin URL "
            "?management=http://HOST:PORT"
        )
    prefix = [program, *(("-n", admin.node) if admin.node else ())]

    def run(args: Sequence[str]) -> str:
        result = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            # The arguments may hold a password: name the command only.
            raise RuntimeError(
                f"rabbitmqctl {args[0]} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    return run


def _ensure_vhost_cli(ctl: Runner, vhost: str, admin: str) -> None:
    """Create the vhost if missing, and let ``admin`` declare the shared exchanges in it."""
    if vhost not in ctl(["list_vhosts", "-q", "--no-table-headers"]).splitlines():
        ctl(["add_vhost", vhost])
        ctl(["set_permissions", "-p", vhost, admin, ".*", ".*", ".*"])


def _admin_options(admin: Admin) -> RabbitOptions:
    from rpclib.transports.rabbit.options import parse_options

    return parse_options(parse_url(admin.amqp_url))


def _admin_connection(options: RabbitOptions) -> BrokerConnection:
    """An AMQP connection as the admin (no heartbeats: it lives for one short operation)."""
    from rpclib.transports.rabbit.connection import HostRing, connect

    return connect(
        replace(options, heartbeat=0),
        HostRing(options.hosts),
        name="rpclib access",
        read_timeout=None,
    )


def declare_shared(admin: Admin, accounts: Sequence[Account]) -> None:
    """Declare the accounts' exchanges, listener pools and the dead-letter queue over AMQP,
    as the admin, and bind the queues to ``rpclib.queues`` by their names."""
    from rpclib.transports.rabbit.connection import close_quietly
    from rpclib.transports.rabbit.declarations import (
        dead_letter_queue_arguments,
        durable_queue_arguments,
    )

    options = _admin_options(admin)
    conn = _admin_connection(options)
    try:
        channel = conn.channel()
        for name, kind in exchanges_of(accounts):
            channel.exchange_declare(name, kind, durable=True, auto_delete=False)
        for name, exchange, key in pool_queues_of(accounts):
            channel.queue_declare(
                name,
                durable=True,
                auto_delete=False,
                arguments=durable_queue_arguments(options.queue_type),
            )
            channel.queue_bind(name, exchange, key)
            channel.queue_bind(name, naming.QUEUES_EXCHANGE, naming.queue_key(name))
        channel.queue_declare(
            naming.DEAD_LETTER_QUEUE,
            durable=True,
            auto_delete=False,
            arguments=dead_letter_queue_arguments(options.queue_type),
        )
        # Bound here so that no account needs to (binding needs write on the queue,
        # which would let any account unbind the dead letters too).
        channel.queue_bind(
            naming.DEAD_LETTER_QUEUE,
            naming.QUEUES_EXCHANGE,
            naming.queue_key(naming.DEAD_LETTER_QUEUE),
        )
        conn.close()
    finally:
        close_quietly(conn)


# --- remove ------------------------------------------------------------------------------


def queues_of(accesses: Iterable[Access]) -> list[str]:
    """The durable queues (and their ``.live`` companions) the accesses consume: their
    server, topic and listener-pool queues. Private queues (inboxes, fanout and advert
    queues) die with their connections; the dead-letter queue is shared."""
    found: set[str] = set()
    for access in accesses:
        for consume in access.grants().consume:
            if not consume.address.fanout:
                name = naming.queue_name(consume.address, consume.group)
                found.update((name, name + naming.LIVE_SUFFIX))
    return sorted(found)


def remove(admin_url: str, accesses: list[Access], *, run: Runner | None = None) -> Removed:
    """Delete the accesses' durable queues on the admin URL's vhost (over AMQP, as the
    admin), then their users; a user that still has permissions on another vhost only
    loses this one's. Queues and users already gone are skipped."""
    from rpclib.access import Removed

    admin = admin_of(admin_url)
    queues = _delete_queues(admin, queues_of(accesses))
    principals = [a.principal for a in accesses]
    removed: list[str] = []
    if admin.management is not None:
        api = ManagementClient(admin.management, admin.user, admin.password, timeout=30)
        for user in principals:
            vhosts = api.user_vhosts(user)
            if vhosts is None:
                continue
            if vhosts - {admin.vhost}:
                api.clear_permissions(admin.vhost, user)
                continue
            api.delete_user(user)
            removed.append(user)
    else:
        ctl = run or _cli(admin)
        users = set(ctl(["list_users", "-q", "--no-table-headers"]).split())
        for user in principals:
            if user not in users:
                continue
            held = ctl(["list_user_permissions", "-q", "--no-table-headers", "--", user])
            vhosts = {line.split("\t")[0] for line in held.splitlines() if line.strip()}
            if vhosts - {admin.vhost}:
                ctl(["clear_permissions", "-p", admin.vhost, "--", user])
                continue
            ctl(["delete_user", "--", user])
            removed.append(user)
    return Removed(accounts=tuple(removed), queues=tuple(queues))


def _delete_queues(admin: Admin, names: Sequence[str]) -> list[str]:
    """Delete the queues ``names`` that exist on the admin's vhost; those deleted."""
    import amqp

    from rpclib.transports.rabbit.connection import close_quietly

    conn = _admin_connection(_admin_options(admin))
    deleted = []
    try:
        channel = conn.channel()
        for name in names:
            try:
                channel.queue_declare(name, passive=True)
            except amqp.exceptions.NotFound:
                channel = conn.channel()  # the broker closed the channel: not there
                continue
            channel.queue_delete(name)
            deleted.append(name)
        conn.close()
    finally:
        close_quietly(conn)
    return deleted
