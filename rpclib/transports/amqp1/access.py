"""Least-privilege RabbitMQ accounts for ``amqp1://``: one user per principal, with exactly
the configure/write/read regexes and topic permissions its :class:`~rpclib.access.Grants`
need under amqp1's own node names (docs/transports/amqp1.md, docs/security.md).

The names differ by addressing strategy: ``rabbitmq`` (RabbitMQ 3.x's AMQP 1.0
plugin, topology over AMQP 0-9-1, per-topic fanout exchanges ``X.T``,
``X.T.live``, ``X.T.fanout``, private nodes bound to ``rpclib:private``) and
``rabbitmq4`` (RabbitMQ 4's native AMQP 1.0: every queue bound straight to
``X``, private nodes reached through the default exchange). The admin URL's
``addressing`` picks one; ``auto`` (the default) asks the broker its version
when applying, and renders the union of both.

What every principal gets, whatever its grants:

- its private nodes, by prefix: ``<principal>:`` (inboxes, their markers,
  fanout and advert queues; no address's node name holds a ``:``);
- on ``rpclib:private``, the topic exchange through which a node is reached by
  its own name (both strategies): binding its own nodes (topic read: its prefix
  and the queues it consumes), and writing (topic write) only the keys its role
  needs: its own nodes and consumed queues (requeued copies), the dead-letter
  queue, any principal's inbox if it consumes a server or topic (replies), any
  watcher's advert node of an exchange it advertises on (advert answers).

No principal may write to the default exchange ``amq.default``: that would let
it put a message into any queue whose name it knows. For a rolling upgrade from
a release that routed requeues, dead letters and (``rabbitmq4``) replies through
it, the admin URL option ``legacy_default_exchange=true`` grants that write
again until every client is upgraded (docs/transports/amqp1.md, "Upgrading").

The exchanges every principal shares (``X``, ``X.adverts``, ``rpclib:private``),
the bounded dead-letter queue (bound to ``rpclib:private`` by its name) and the
listener pools' queues (``X.T#G``, which a notifier makes sure exist but may
not configure) are declared here, by the admin, and nobody else may configure
the shared ones (configure would let a rogue delete them); the driver then
finds them declared (:meth:`RabbitControl.shared_exchange`).

Applying goes through the RabbitMQ management HTTP API
(:mod:`rpclib.transports.rabbitmq_management`, shared with ``rabbit://``; the
``rabbitmq_management`` plugin; URL option ``management_port``, default 15672,
on the admin URL's first host).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from rpclib.access import Account, Grants, check_principal
from rpclib.exceptions import TransportError
from rpclib.transports.amqp1.addressing import (
    DEAD_LETTER_QUEUE,
    FANOUT,
    LIVE,
    MARK,
    OWNER_MARK,
    PRIVATE_EXCHANGE,
    REPLY_PREFIX,
    SYNC,
    dead_letter_arguments,
    queue_name,
)
from rpclib.transports.amqp1.options import resolve_queue_type
from rpclib.transports.base import Address
from rpclib.transports.rabbitmq_management import ManagementClient, Permissions, TopicPermission
from rpclib.transports.url import TransportURL, parse_url

DEFAULT_EXCHANGE: Final = "amq.default"
NOTHING: Final = "^(?!)"
"""A regex no name matches (an empty one would match every routing key)."""
ANY_PRINCIPAL: Final = "[A-Za-z0-9_-]+"
"""Any principal's name (rpclib.access.PRINCIPAL), as the start of a private node's name."""
STRATEGIES: Final = ("rabbitmq", "rabbitmq4")
DEFAULT_MANAGEMENT_PORT: Final = 15672
ADMIN_OPTIONS: Final = frozenset({"management_port", "legacy_default_exchange"})
"""Options of the admin URL only (rpclib.access.login_url drops them for the accounts)."""


def literal(name: str) -> str:
    """``name`` as a regex matching exactly it (Erlang's ``re`` reads these escapes too)."""
    return "".join("\\" + c if c in ".^$|?*+()[]{}\\" else c for c in name)


def _one_of(alternatives: Iterable[str]) -> str:
    """``^(?:a|b)$`` of regex ``alternatives``; :data:`NOTHING` when there are none."""
    parts = sorted(set(alternatives))
    return f"^(?:{'|'.join(parts)})$" if parts else NOTHING


@dataclass
class Needs:
    """What one principal needs, as name regexes (unanchored parts, joined by :func:`_one_of`)."""

    configure: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    topic_write: dict[str, set[str]] = field(default_factory=dict)
    topic_read: dict[str, set[str]] = field(default_factory=dict)

    def node(self, name: str, *, configure: bool = True, write: bool = True) -> None:
        """A node the principal declares (configure), binds (write) and reads from."""
        if configure:
            self.configure.add(literal(name))
        if write:
            self.write.add(literal(name))
        self.read.add(literal(name))

    def sends(self, exchange: str, key_regex: str) -> None:
        self.write.add(literal(exchange))
        self.topic_write.setdefault(exchange, set()).add(key_regex)
        self.topic_read.setdefault(exchange, set())

    def binds(self, exchange: str, key_regex: str) -> None:
        self.read.add(literal(exchange))
        self.topic_read.setdefault(exchange, set()).add(key_regex)
        self.topic_write.setdefault(exchange, set())


def reply_keys() -> str:
    """Any principal's inbox on :data:`PRIVATE_EXCHANGE`, but not its marker queue."""
    sep, prefix, mark = literal(OWNER_MARK), literal(REPLY_PREFIX), literal(MARK)
    return f"{ANY_PRINCIPAL}{sep}{prefix}(?![^:]*{mark}$)[^:]*"


def advert_answer_keys(exchange: str) -> str:
    """Any principal's advert watch node of ``exchange`` on :data:`PRIVATE_EXCHANGE`."""
    return f"{ANY_PRINCIPAL}{literal(OWNER_MARK)}{literal(exchange + '.adverts.')}[^:]*"


def needs(grants: Grants, strategy: str, *, legacy_default_exchange: bool = False) -> Needs:
    """The permissions ``grants`` need under ``strategy``'s names (``rabbitmq`` or
    ``rabbitmq4``), the principal's own prefix and the defaults every principal has;
    ``legacy_default_exchange``: also write on ``amq.default`` (rolling upgrades only)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"addressing {strategy!r}: least-privilege accounts for {STRATEGIES}")
    p = check_principal(grants.principal)
    own = literal(p + OWNER_MARK) + ".*"
    out = Needs({own}, {own}, {own})
    if legacy_default_exchange:
        out.write.add(literal(DEFAULT_EXCHANGE))
    out.sends(PRIVATE_EXCHANGE, own)
    out.binds(PRIVATE_EXCHANGE, own)
    out.sends(PRIVATE_EXCHANGE, literal(DEAD_LETTER_QUEUE))
    for exchange, topic in grants.send:
        t = literal(topic)
        out.sends(exchange, f"{t}(?:{literal(LIVE)}|{literal(FANOUT)}|@.+)?")
    for exchange, topic in grants.watch:
        out.sends(f"{exchange}.adverts", literal(topic + SYNC))
        out.binds(f"{exchange}.adverts", literal(topic))
    for address in grants.advertise:
        out.sends(f"{address.exchange}.adverts", literal(address.topic))
        out.binds(f"{address.exchange}.adverts", literal(address.topic + SYNC))
        out.sends(PRIVATE_EXCHANGE, advert_answer_keys(address.exchange))
    for consume in grants.consume:
        _consume(out, consume.address, consume.group, strategy)
        if not consume.address.fanout:
            out.sends(PRIVATE_EXCHANGE, reply_keys())
    return out


def _consume(out: Needs, address: Address, group: str | None, strategy: str) -> None:
    x, t = address.exchange, address.topic
    if address.fanout:
        out.binds(x, literal(t + FANOUT))  # the private queue: covered by the own prefix
        if strategy == "rabbitmq":  # X.T.fanout (fanout) <- X; own queue <- X.T.fanout
            out.node(f"{x}.{t}{FANOUT}")
        return
    durable = queue_name(address, group)
    for name in (durable, durable + LIVE):
        out.node(name)
        out.sends(PRIVATE_EXCHANGE, literal(name))  # requeued copies
        out.binds(PRIVATE_EXCHANGE, literal(name))
    key = t if address.server is None else f"{t}@{address.server}"
    out.binds(x, literal(key) + f"(?:{literal(LIVE)})?")
    if strategy == "rabbitmq" and address.server is None:  # X.T, X.T.live (fanout) <- X
        out.node(f"{x}.{t}")
        out.node(f"{x}.{t}{LIVE}")


def permissions(
    account: Account, strategy: str, *, legacy_default_exchange: bool = False
) -> Permissions:
    """``account``'s user and permission regexes under ``strategy``."""
    n = needs(account.access.grants(), strategy, legacy_default_exchange=legacy_default_exchange)
    exchanges = sorted(set(n.topic_write) | set(n.topic_read))
    topics = tuple(
        TopicPermission(x, _one_of(n.topic_write.get(x, ())), _one_of(n.topic_read.get(x, ())))
        for x in exchanges
    )
    return Permissions(
        account.access.principal,
        _one_of(n.configure),
        _one_of(n.write),
        _one_of(n.read),
        topics,
    )


def shared_nodes(accounts: list[Account], strategy: str) -> tuple[list[str], list[str]]:
    """(topic exchanges, durable queues) every principal shares: declared by the admin."""
    exchanges: set[str] = set()
    for account in accounts:
        g = account.access.grants()
        exchanges.update(c.address.exchange for c in g.consume)
        exchanges.update(x for x, _ in g.send)
        exchanges.update(f"{x}.adverts" for x, _ in g.watch)
        exchanges.update(f"{a.exchange}.adverts" for a in g.advertise)
    exchanges.add(PRIVATE_EXCHANGE)
    return sorted(exchanges), [DEAD_LETTER_QUEUE]


def pool_queues(accounts: list[Account]) -> list[tuple[Address, str]]:
    """The listener pools (address, group) of ``accounts``: declared by the admin, so that a
    notifier, which may not configure them, finds them kept before their listeners start."""
    pools = {
        (c.address, c.group)
        for a in accounts
        for c in a.access.grants().consume
        if c.group is not None and not c.address.fanout
    }
    return sorted(((x, g) for x, g in pools if g is not None), key=lambda p: (str(p[0]), p[1]))


def _declare_pool(
    api: ManagementClient, target: AdminTarget, strategy: str, pool: tuple[Address, str]
) -> None:
    """Declare and bind one pool's queue as the driver of ``strategy`` would."""
    address, group = pool
    x, t, v = address.exchange, address.topic, target.vhost
    name = queue_name(address, group)
    if strategy == "rabbitmq":  # X.T (fanout) <- X with T; the queue <- X.T
        api.declare_exchange(v, f"{x}.{t}", "fanout")
        api.bind_exchange(v, x, f"{x}.{t}", t)
        api.declare_queue(v, name, {})
        api.bind_queue(v, f"{x}.{t}", name, "")
    else:
        api.declare_queue(v, name, {"x-queue-type": target.queue_type})
        api.bind_queue(v, x, name, t)
    api.bind_queue(v, PRIVATE_EXCHANGE, name, name)


def _merge(a: Permissions, b: Permissions) -> Permissions:
    """What both strategies need (``addressing=auto`` rendered without asking the broker)."""

    def union(x: str, y: str) -> str:
        parts = [r for r in (x, y) if r != NOTHING]
        return NOTHING if not parts else parts[0] if len(set(parts)) == 1 else "|".join(parts)

    topics: dict[str, TopicPermission] = {t.exchange: t for t in a.topics}
    for t in b.topics:
        if t.exchange in topics:
            o = topics[t.exchange]
            t = TopicPermission(t.exchange, union(o.write, t.write), union(o.read, t.read))
        topics[t.exchange] = t
    return Permissions(
        a.user,
        union(a.configure, b.configure),
        union(a.write, b.write),
        union(a.read, b.read),
        tuple(topics[x] for x in sorted(topics)),
    )


# --- the admin URL ---------------------------------------------------------------------


@dataclass(frozen=True)
class AdminTarget:
    """Where and as whom to apply: the management API and the vhost, from the admin URL."""

    host: str
    port: int
    user: str
    password: str
    vhost: str
    strategy: str
    queue_type: str
    tls: bool
    legacy_default_exchange: bool = False
    """Grant write on ``amq.default`` again (clients of older releases still run)."""


def admin_target(admin_url: str) -> AdminTarget:
    """Read ``amqp1://admin:pw@host/vhost?addressing=...&management_port=...``."""
    url: TransportURL = parse_url(admin_url)
    url.reject_unknown_options(
        {"addressing", "management_port", "queue_type", "ssl", "legacy_default_exchange"}
    )
    strategy = url.option("addressing", "auto") or "auto"
    if strategy not in (*STRATEGIES, "auto"):
        raise ValueError(
            f"{url.scheme}:// accounts need addressing=rabbitmq, rabbitmq4 or auto, "
            f"not {strategy!r} (only RabbitMQ grants permissions this way)"
        )
    if not url.hosts:
        raise ValueError(f"admin URL {url} names no host")
    host = url.hosts[0]
    if host.username is None or host.password is None:
        raise ValueError(f"admin URL {url} needs the administrator's user and password")
    queue_type = resolve_queue_type(url.option("queue_type", "auto") or "auto", len(url.hosts))
    return AdminTarget(
        host.hostname,
        url.int_option("management_port", DEFAULT_MANAGEMENT_PORT, minimum=1),
        host.username,
        host.password,
        url.virtual_host or "/",
        strategy,
        queue_type,
        url.scheme == "amqps" or url.bool_option("ssl", False),
        url.bool_option("legacy_default_exchange", False),
    )


# --- applying ----------------------------------------------------------------------------


def management_client(target: AdminTarget) -> ManagementClient:
    """The management API on the admin URL's first host (https when the URL uses TLS)."""
    scheme = "https" if target.tls else "http"
    host = f"[{target.host}]" if ":" in target.host else target.host
    return ManagementClient(f"{scheme}://{host}:{target.port}", target.user, target.password)


def _strategy_of(version: str) -> str:
    major = version.split(".", 1)[0]
    if not major.isdigit():
        raise TransportError(f"RabbitMQ reported no readable version ({version!r})")
    return "rabbitmq4" if int(major) >= 4 else "rabbitmq"


def _plan(
    accounts: list[Account], strategy: str, legacy: bool = False
) -> tuple[list[Permissions], list[str], list[str]]:
    """Each account's permissions (in order), the shared exchanges and queues."""
    if strategy == "auto":
        users = [
            _merge(
                permissions(a, "rabbitmq", legacy_default_exchange=legacy),
                permissions(a, "rabbitmq4", legacy_default_exchange=legacy),
            )
            for a in accounts
        ]
        x3, q3 = shared_nodes(accounts, "rabbitmq")
        x4, q4 = shared_nodes(accounts, "rabbitmq4")
        return users, sorted(set(x3) | set(x4)), sorted(set(q3) | set(q4))
    exchanges, queues = shared_nodes(accounts, strategy)
    users = [permissions(a, strategy, legacy_default_exchange=legacy) for a in accounts]
    return users, exchanges, queues


def _dead_letter_arguments(target: AdminTarget, strategy: str) -> dict[str, Any]:
    """As the driver declares them: bounded; typed on ``rabbitmq4``, plain classic on the
    3.x plugin (whose driver declares it over AMQP 0-9-1 without a type)."""
    return dead_letter_arguments(target.queue_type if strategy == "rabbitmq4" else None)


def _render_pools(target: AdminTarget, accounts: list[Account]) -> list[str]:
    """The ``rabbitmqadmin`` lines of :func:`_declare_pool` for every listener pool."""
    pools = pool_queues(accounts)
    if pools and target.strategy == "auto":
        return ["# listener pool queues: declared by apply, as the broker's version needs"]
    v, q = shlex.quote(target.vhost), shlex.quote
    lines = []
    for address, group in pools:
        x, t, name = address.exchange, address.topic, queue_name(address, group)
        admin = f"rabbitmqadmin -V {v} declare"
        if target.strategy == "rabbitmq":
            lines += [
                f"{admin} exchange name={q(f'{x}.{t}')} type=fanout",
                f"{admin} binding source={q(x)} destination_type=exchange "
                f"destination={q(f'{x}.{t}')} routing_key={q(t)}",
                f"{admin} queue name={q(name)} durable=true",
                f"{admin} binding source={q(f'{x}.{t}')} destination={q(name)}",
            ]
        else:
            args = q(json.dumps({"x-queue-type": target.queue_type}))
            lines += [
                f"{admin} queue name={q(name)} durable=true arguments={args}",
                f"{admin} binding source={q(x)} destination={q(name)} routing_key={q(t)}",
            ]
        lines.append(
            f"{admin} binding source={q(PRIVATE_EXCHANGE)} destination={q(name)} "
            f"routing_key={q(name)}"
        )
    return lines


def render(admin_url: str, accounts: list[Account]) -> str:
    """The commands :func:`apply` amounts to (``rabbitmqctl``, ``rabbitmqadmin``)."""
    target = admin_target(admin_url)
    users, exchanges, queues = _plan(accounts, target.strategy, target.legacy_default_exchange)
    v = shlex.quote(target.vhost)
    lines = [f"# amqp1:// least-privilege accounts (addressing={target.strategy}), vhost {v}"]
    for x in exchanges:
        lines.append(f"rabbitmqadmin -V {v} declare exchange name={shlex.quote(x)} type=topic")
    for name in queues:
        args = _dead_letter_arguments(target, target.strategy)
        extra = f" arguments={shlex.quote(json.dumps(args))}" if args else ""
        lines.append(
            f"rabbitmqadmin -V {v} declare queue name={shlex.quote(name)} durable=true{extra}"
        )
        lines.append(
            f"rabbitmqadmin -V {v} declare binding source={shlex.quote(PRIVATE_EXCHANGE)} "
            f"destination={shlex.quote(name)} routing_key={shlex.quote(name)}"
        )
    lines += _render_pools(target, accounts)
    for account, u in zip(accounts, users, strict=True):
        name, password = shlex.quote(u.user), shlex.quote(account.password)
        lines += [
            f"rabbitmqctl add_user {name} {password}"
            f" || rabbitmqctl change_password {name} {password}",
            f"rabbitmqctl set_user_tags {name}",
            f"rabbitmqctl set_permissions -p {v} {name} "
            + " ".join(shlex.quote(r) for r in (u.configure, u.write, u.read)),
            f"rabbitmqctl clear_topic_permissions -p {v} {name}",
        ]
        lines += [
            f"rabbitmqctl set_topic_permissions -p {v} {name} {shlex.quote(t.exchange)} "
            f"{shlex.quote(t.write)} {shlex.quote(t.read)}"
            for t in u.topics
        ]
    return "\n".join(lines)


def apply(admin_url: str, accounts: list[Account]) -> None:
    """Declare the shared nodes, then create or update each principal's user with exactly
    its permissions (idempotent: topic permissions are replaced, not added to)."""
    target = admin_target(admin_url)
    api = management_client(target)
    strategy = target.strategy
    if strategy == "auto":
        strategy = _strategy_of(api.version())
    users, exchanges, queues = _plan(accounts, strategy, target.legacy_default_exchange)
    for x in exchanges:
        api.declare_exchange(target.vhost, x)
    for name in queues:
        api.declare_queue(target.vhost, name, _dead_letter_arguments(target, strategy))
        api.bind_queue(target.vhost, PRIVATE_EXCHANGE, name, name)
    for pool in pool_queues(accounts):
        _declare_pool(api, target, strategy, pool)
    for account, u in zip(accounts, users, strict=True):
        api.put_user(u.user, account.password)
        api.set_permissions(target.vhost, u)


__all__ = ["Permissions", "apply", "management_client", "needs", "permissions", "render"]
