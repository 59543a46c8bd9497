"""Attacks on amqp1:// by a rogue compute node holding its own valid account, on private
RabbitMQ nodes of both generations (3.x's AMQP 1.0 plugin, RabbitMQ 4's native AMQP 1.0)
whose users were provisioned by rpclib.transports.amqp1.access.apply.

Each node runs the management plugin on a free port of its own (apply's way in); the nodes
are the session's (tests/support/amqp1.py), shared with the process-cloud test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from proton import Message
from proton.utils import BlockingConnection

import rpclib
from rpclib.access import Access, Account
from rpclib.exceptions import TransportError
from rpclib.target import Target
from rpclib.transports.amqp1 import access, addressing, messages
from rpclib.transports.amqp1.addressing import (
    DEAD_LETTER_MAX_LENGTH,
    DEAD_LETTER_QUEUE,
    LEGACY_DEAD_LETTER_QUEUE,
    PRIVATE_EXCHANGE,
    Route,
    Source,
)
from rpclib.transports.amqp1.consumer import Amqp1Subscription
from rpclib.transports.amqp1.driver import Amqp1Driver
from rpclib.transports.amqp1.io_thread import Future, Loop
from rpclib.transports.base import Address, Guarantee, Incoming
from tests.rpc.helpers import wait_until
from tests.support.amqp1 import ManagedNode
from tests.support.conductor_endpoint import RecordingConductor
from tests.support.rabbit_node import RabbitNode, running

STRATEGY = {3: "rabbitmq", 4: "rabbitmq4"}
ACCESS = [
    Access("conductor").serve(Target(topic="conductor", server="c1")).call(Target(topic="compute")),
    Access("scheduler").call(Target(topic="conductor")),
    Access("compute-1")
    .serve(Target(topic="compute", server="compute-1"))
    .call(Target(topic="conductor")),
    Access("compute-2")
    .serve(Target(topic="compute", server="compute-2"))
    .call(Target(topic="conductor")),
]
POLICY = rpclib.Policy(
    [
        rpclib.Allow("role:compute", namespace="conductor", methods=["heartbeat"]),
        rpclib.Allow("scheduler", namespace="conductor", methods=["*"]),
    ],
    roles={"compute": ["compute-*"]},
)


@dataclass(frozen=True)
class SecureNode:
    """A private node with one least-privilege user per principal of ACCESS."""

    node: RabbitNode
    generation: int
    management_port: int

    @property
    def strategy(self) -> str:
        return STRATEGY[self.generation]

    def admin_url(self, vhost: str = "") -> str:
        return (
            f"amqp1://guest:guest@127.0.0.1:{self.node.port}/{vhost}"
            f"?addressing={self.strategy}&management_port={self.management_port}"
        )

    def url(self, principal: str, vhost: str = "") -> str:
        return (
            f"amqp1://{principal}:{password(principal)}@127.0.0.1:{self.node.port}/{vhost}"
            f"?addressing={self.strategy}&send_timeout=60"  # generous: a loaded machine
        )

    def raw_node(self, queue: str) -> str:
        """A queue's AMQP 1.0 address under this generation's strategy."""
        return f"/amq/queue/{queue}" if self.generation == 3 else f"/queues/{queue}"

    def queue_route(self, queue: str) -> Route:
        """Straight into ``queue`` by its name (the default exchange)."""
        if self.generation == 3:
            return Route(f"/amq/queue/{queue}")
        return Route("", to=f"/queues/{quote(queue, safe='')}")

    def exchange_route(self, exchange: str, key: str) -> Route:
        """Through ``exchange`` with routing key ``key``."""
        if self.generation == 3:
            return Route(f"/exchange/{exchange}", key)
        return Route("", to=f"/exchanges/{quote(exchange, safe='')}/{quote(key, safe='')}")

    def messages_in(self, queue: str, vhost: str = "/") -> int:
        """How many messages ``queue`` holds, as the broker counts them (not sampled stats)."""
        listing = self.node.rabbitmqctl("list_queues", "-p", vhost, "-q", "name", "messages")
        for line in listing.splitlines():
            name, _, count = line.rpartition("\t")
            if name == queue:
                return int(count)
        raise AssertionError(f"no queue {queue} on the node")


def password(principal: str) -> str:
    return f"{principal}-secret"


@pytest.fixture(scope="module", params=[3, 4], ids=["rabbitmq3", "rabbitmq4"])
def secure(request: pytest.FixtureRequest) -> SecureNode:
    generation = int(request.param)
    managed: ManagedNode = request.getfixturevalue(f"amqp1_managed_node{generation}")
    secure = SecureNode(running(managed.node), generation, managed.management_port)
    access.apply(secure.admin_url(), [Account(a, password(a.principal)) for a in ACCESS])
    return secure


LEGACY_VHOST = "upgrading"


@pytest.fixture(scope="module")
def upgrading(secure: SecureNode) -> str:
    """A vhost whose accounts were applied for a rolling upgrade (``legacy_default_exchange``):
    clients of the release that routed through the default exchange still run there."""
    secure.node.rabbitmqctl("add_vhost", LEGACY_VHOST)
    secure.node.rabbitmqctl("set_permissions", "-p", LEGACY_VHOST, "guest", ".*", ".*", ".*")
    admin = secure.admin_url(LEGACY_VHOST) + "&legacy_default_exchange=true"
    access.apply(admin, [Account(a, password(a.principal)) for a in ACCESS])
    return LEGACY_VHOST


@pytest.fixture
def login(secure: SecureNode) -> Iterator[Callable[..., Amqp1Driver]]:
    """A driver logged in as the given principal (closed after the test)."""
    opened: list[Amqp1Driver] = []

    def open_as(principal: str, vhost: str = "") -> Amqp1Driver:
        driver = rpclib.get_transport(secure.url(principal, vhost)).driver
        assert isinstance(driver, Amqp1Driver)
        opened.append(driver)
        return driver

    yield open_as
    for driver in opened:
        driver.close()


@pytest.fixture
def conductor(secure: SecureNode) -> Iterator[RecordingConductor]:
    endpoint = RecordingConductor()
    transport = rpclib.get_transport(secure.url("conductor"))
    server = rpclib.RPCServer(
        transport, rpclib.Target(topic="conductor", server="c1"), [endpoint], policy=POLICY
    )
    server.start()
    yield endpoint
    server.stop()
    server.wait()
    transport.close()


def call(secure: SecureNode, principal: str, method: str) -> Any:
    transport = rpclib.get_transport(secure.url(principal))
    try:
        target = rpclib.Target(topic="conductor", namespace="conductor", version="1.0")
        return rpclib.RPCClient(transport, target, timeout=20).call({}, method)
    finally:
        transport.close()


# --- the sender ------------------------------------------------------------------------


def test_the_sender_a_server_sees_is_the_callers_broker_account(
    secure: SecureNode, conductor: RecordingConductor
) -> None:
    assert call(secure, "compute-1", "heartbeat") == "compute-1"
    assert call(secure, "compute-2", "heartbeat") == "compute-2"
    assert conductor.calls == [("heartbeat", "compute-1"), ("heartbeat", "compute-2")]


def test_a_message_claiming_another_user_id_is_refused_by_the_broker(
    secure: SecureNode, conductor: RecordingConductor, login: Callable[[str], Amqp1Driver]
) -> None:
    rogue = login("compute-1")
    rogue._loop.__class__ = _Impersonating  # every user-id it sends now says "scheduler"
    with pytest.raises(TransportError, match="user_id"):
        rogue.send(
            Address("rpclib", "conductor", server="c1"),
            b"forged",
            guarantee=Guarantee.AT_LEAST_ONCE,
        )
    assert call(secure, "compute-2", "heartbeat") == "compute-2"
    assert conductor.calls == [("heartbeat", "compute-2")]  # nothing else reached it


class _Impersonating(Loop):
    """A connection that puts another user's name in ``user-id`` (a rogue's own driver)."""

    @property
    def own_user(self) -> str:
        return "scheduler"


def test_a_relayed_sender_is_believed_only_from_the_readers_own_user(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    server = login("conductor")
    seen: list[str | None] = []
    got = threading.Event()

    def handler(incoming: Incoming) -> None:
        seen.append(incoming.sender)
        incoming.ack()
        got.set()

    server.listen(Address("rpclib", "conductor", server="c1"), handler)
    raw = BlockingConnection(
        f"amqp://compute-1:{password('compute-1')}@127.0.0.1:{secure.node.port}",
        allowed_mechs="PLAIN",
        allow_insecure_mechs=True,
        virtual_host="vhost:/",
    )
    try:
        route = secure.exchange_route("rpclib", "conductor@c1")  # where compute-1 may write
        node = raw.create_sender(route.node or None)
        message = Message(
            body=b"x", properties={messages.RELAYED_SENDER: "scheduler"}, durable=True
        )
        message.subject, message.address = route.subject, route.to
        message.user_id = b"compute-1"
        node.send(message)
    finally:
        raw.close()
    assert got.wait(20)
    assert seen == [None]


def test_a_requeued_message_keeps_its_original_sender(
    login: Callable[[str], Amqp1Driver],
) -> None:
    server = login("conductor")
    seen: list[tuple[str | None, int]] = []

    def handler(incoming: Incoming) -> None:
        seen.append((incoming.sender, incoming.attempts))
        if incoming.attempts == 1:
            incoming.requeue()  # re-published by the driver, with the conductor's user-id
        else:
            incoming.ack()

    server.listen(Address("rpclib", "conductor", server="c1"), handler)
    login("compute-1").send(
        Address("rpclib", "conductor", server="c1"), b"update", guarantee=Guarantee.AT_LEAST_ONCE
    )
    wait_until(lambda: len(seen) == 2, timeout=20)
    assert seen == [("compute-1", 1), ("compute-1", 2)]


def test_a_dead_letter_records_its_original_sender(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    server = login("conductor")
    server.listen(
        Address("rpclib", "conductor", server="c1"), lambda m: m.dead_letter("test refusal")
    )
    login("compute-1").send(
        Address("rpclib", "conductor", server="c1"), b"poison", guarantee=Guarantee.AT_LEAST_ONCE
    )
    raw = BlockingConnection(
        f"amqp://guest:guest@127.0.0.1:{secure.node.port}",
        allowed_mechs="PLAIN",
        allow_insecure_mechs=True,
        virtual_host="vhost:/",
    )
    try:
        receiver = raw.create_receiver(secure.raw_node(DEAD_LETTER_QUEUE))
        while True:
            letter = receiver.receive(timeout=20)
            receiver.accept()
            if letter.body in (b"poison", "poison"):
                break
    finally:
        raw.close()
    assert letter.user_id == b"conductor"  # the broker verified who dead-lettered it
    properties: dict[str, Any] = dict(letter.properties or {})
    assert properties[messages.RELAYED_SENDER] == "compute-1"


# --- the accounts ----------------------------------------------------------------------


def _publish(driver: Amqp1Driver, route: Route, body: bytes) -> str | None:
    """Publish ``body`` at-least-once to ``route`` over ``driver``'s own connection: None
    when the broker accepted it, else what it answered (or that it never answered)."""
    future = Future()
    message = messages.make(body, durable=True)
    driver._loop.submit(lambda: driver._send_unsettled(route, message, future))
    if not future.wait_for(30):
        return "no answer"
    return future.wait(0, "")  # type: ignore[no-any-return]


VICTIM = Address("rpclib", "compute", server="compute-2")
VICTIM_QUEUE = "rpclib.compute@compute-2"


def test_a_rogue_cannot_put_a_message_into_another_nodes_queue_by_name(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    login("compute-2").declare(VICTIM)
    before = secure.messages_in(VICTIM_QUEUE)
    refused = _publish(login("compute-1"), secure.queue_route(VICTIM_QUEUE), b"forged build")
    assert refused is not None
    assert secure.messages_in(VICTIM_QUEUE) == before


def test_a_rogue_cannot_put_a_message_into_another_nodes_queue_through_the_private_exchange(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    login("compute-2").declare(VICTIM)  # bound to rpclib:private by its name (requeues)
    before = secure.messages_in(VICTIM_QUEUE)
    route = secure.exchange_route(PRIVATE_EXCHANGE, VICTIM_QUEUE)
    refused = _publish(login("compute-1"), route, b"forged build")
    assert refused is not None
    assert secure.messages_in(VICTIM_QUEUE) == before


def test_the_owner_may_put_a_message_into_its_own_queue_through_the_private_exchange(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    owner = login("compute-2")
    owner.declare(VICTIM)
    before = secure.messages_in(VICTIM_QUEUE)
    route = secure.exchange_route(PRIVATE_EXCHANGE, VICTIM_QUEUE)
    assert _publish(owner, route, b"requeued") is None
    wait_until(lambda: secure.messages_in(VICTIM_QUEUE) == before + 1, timeout=20)
    secure.node.rabbitmqctl("purge_queue", VICTIM_QUEUE)


def test_a_rogue_cannot_consume_another_compute_nodes_queue(
    login: Callable[[str], Amqp1Driver],
) -> None:
    rogue = login("compute-1")
    with pytest.raises(TransportError, match="(?i)access|refused|unauthorized|403"):
        rogue.listen(Address("rpclib", "compute", server="compute-2"), lambda m: m.ack())


def test_a_rogue_cannot_attach_to_another_compute_nodes_queue(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    login("compute-2").listen(Address("rpclib", "compute", server="compute-2"), lambda m: m.ack())
    with pytest.raises(Exception, match="(?i)access|refused|unauthorized"):
        _attach(login("compute-1"), "rpclib.compute@compute-2")


def test_a_rogue_cannot_read_another_principals_inbox(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    inbox = login("compute-2").open_inbox(lambda body: None)
    assert inbox.address.startswith("compute-2:")
    with pytest.raises(Exception, match="(?i)access|refused|unauthorized"):
        _attach(login("compute-1"), inbox.address)


def test_a_rogue_cannot_bind_its_own_queue_to_another_nodes_messages(
    login: Callable[[str], Amqp1Driver],
) -> None:
    rogue = login("compute-1")
    spy = "compute-1:spy"
    with pytest.raises(TransportError, match="(?i)access|refused|403"):
        _bind(rogue, spy, "rpclib", "compute@compute-2")


def test_a_rogue_cannot_bind_its_own_queue_to_another_principals_replies(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    inbox = login("compute-2").open_inbox(lambda body: None)
    rogue = login("compute-1")
    exchange = "rpclib:private" if secure.generation == 3 else "rpclib"
    with pytest.raises(TransportError, match="(?i)access|refused|403"):
        _bind(rogue, "compute-1:spy", exchange, inbox.address)


def _attach(driver: Amqp1Driver, queue: str) -> None:
    """Attach a receiver to ``queue`` over the rogue's own connection; raises the refusal."""
    node = driver.addressing.private_source(queue).node
    spy = Amqp1Subscription(
        driver._loop,
        Address("rpclib", "spy"),
        None,
        lambda m: m.ack(),
        1,
        [Source(node, False)],
        20,
    )
    driver._attach(spy, f"attaching to {queue}")


def _bind(driver: Amqp1Driver, queue: str, exchange: str, key: str) -> None:
    """Declare ``queue`` (the rogue's own name) and bind it to ``exchange`` with ``key``,
    through the rogue's own topology channel."""
    strategy: Any = driver.addressing
    if strategy.name == "rabbitmq4":
        strategy._queue(queue, exclusive=True)
        strategy._bind(queue, exchange, key)
    else:
        strategy.control.queue(queue, durable=False, auto_delete=True)
        strategy.control.bind_queue(queue, exchange, key)


# --- authorization over amqp1:// ---------------------------------------------------------


def test_a_server_with_a_policy_refuses_the_rogue_and_serves_the_allowed(
    secure: SecureNode, conductor: RecordingConductor
) -> None:
    with pytest.raises(rpclib.Forbidden):
        call(secure, "compute-1", "list_instances")
    assert call(secure, "scheduler", "list_instances") == ["every project's instances"]
    assert call(secure, "compute-1", "heartbeat") == "compute-1"
    assert conductor.calls == [("list_instances", "scheduler"), ("heartbeat", "compute-1")]


# --- dead letters ------------------------------------------------------------------------


def _dead_letters(secure: SecureNode, count: int) -> list[Message]:
    """The first ``count`` dead letters, read (and accepted) as the administrator."""
    raw = BlockingConnection(
        f"amqp://guest:guest@127.0.0.1:{secure.node.port}",
        allowed_mechs="PLAIN",
        allow_insecure_mechs=True,
        virtual_host="vhost:/",
    )
    try:
        receiver = raw.create_receiver(secure.raw_node(DEAD_LETTER_QUEUE))
        letters = []
        for _ in range(count):
            letters.append(receiver.receive(timeout=20))
            receiver.accept()
        return letters
    finally:
        raw.close()


def test_an_at_most_once_messages_dead_letter_is_transient_where_the_broker_allows(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    secure.node.rabbitmqctl("purge_queue", DEAD_LETTER_QUEUE)
    server = login("conductor")
    address = Address("rpclib", "conductor", server="c1")
    server.listen(address, lambda m: m.dead_letter("garbage"))
    sender = login("compute-1")
    sender.send(address, b"promised", guarantee=Guarantee.AT_LEAST_ONCE)
    wait_until(lambda: secure.messages_in(DEAD_LETTER_QUEUE) == 1, timeout=20)
    sender.send(address, b"unpromised", guarantee=Guarantee.AT_MOST_ONCE)
    wait_until(lambda: secure.messages_in(DEAD_LETTER_QUEUE) == 2, timeout=20)
    letters = {bytes(m.body): m.durable for m in _dead_letters(secure, 2)}
    # RabbitMQ 4 takes a message whose header leaves `durable` out as durable, and proton
    # never writes an explicit false: there the bound alone limits what a flood stores
    # (docs/security.md, "Floods").
    unpromised_durable = secure.generation == 4
    assert letters == {b"promised": True, b"unpromised": unpromised_durable}


def test_the_dead_letter_queue_keeps_at_most_its_bound_dropping_the_oldest(
    secure: SecureNode, login: Callable[[str], Amqp1Driver]
) -> None:
    """More than the bound dead-lettered through the account's own route: the bound stays."""
    secure.node.rabbitmqctl("purge_queue", DEAD_LETTER_QUEUE)
    flooder = login("compute-1")
    route = flooder.addressing.dead_letter_route()
    total = DEAD_LETTER_MAX_LENGTH + 100

    accepted: list[str | None] = []

    def flood() -> None:
        for i in range(total):
            message = messages.make(b"%d" % i, durable=False)
            flooder._loop.send(route, message, on_outcome=accepted.append)

    flooder._loop.submit(flood)
    wait_until(lambda: len(accepted) == total, timeout=180)
    assert set(accepted) == {None}
    assert secure.messages_in(DEAD_LETTER_QUEUE) == DEAD_LETTER_MAX_LENGTH
    (oldest,) = _dead_letters(secure, 1)
    assert bytes(oldest.body) == b"%d" % (total - DEAD_LETTER_MAX_LENGTH)
    secure.node.rabbitmqctl("purge_queue", DEAD_LETTER_QUEUE)


def test_a_driver_warns_once_that_the_old_unbounded_dead_letter_queue_holds_messages(
    secure: SecureNode, login: Callable[..., Amqp1Driver], caplog: pytest.LogCaptureFixture
) -> None:
    api = access.management_client(access.admin_target(secure.admin_url()))
    api.declare_queue("/", LEGACY_DEAD_LETTER_QUEUE, {})
    raw = BlockingConnection(
        f"amqp://guest:guest@127.0.0.1:{secure.node.port}",
        allowed_mechs="PLAIN",
        allow_insecure_mechs=True,
        virtual_host="vhost:/",
    )
    try:
        raw.create_sender(secure.raw_node(LEGACY_DEAD_LETTER_QUEUE)).send(Message(body=b"old"))
    finally:
        raw.close()
    addressing._legacy_warned.clear()
    try:
        for principal in ("compute-1", "compute-2"):
            login(principal).listen(
                Address("rpclib", "compute", server=principal), lambda m: m.ack()
            )
    finally:
        api.request("DELETE", f"/queues/%2F/{LEGACY_DEAD_LETTER_QUEUE}")
    warnings = [r for r in caplog.records if LEGACY_DEAD_LETTER_QUEUE + " of an" in r.message]
    assert len(warnings) == 1
    assert "holds 1 messages" in warnings[0].message


# --- a rolling upgrade (docs/transports/amqp1.md, "Upgrading to rpclib:private routing") --


OLD_INBOX = "compute-1:rpclib.reply.oldhost.1.1"
"""An inbox named as the release before rpclib:private routing named them (no ``+``)."""


def _old_inbox(driver: Amqp1Driver) -> None:
    """Declare ``OLD_INBOX`` as that release did: on 4.x bound to nothing (reached through the
    default exchange), on 3.x bound to ``rpclib:private`` by its name (as today)."""
    strategy: Any = driver.addressing
    if strategy.name == "rabbitmq4":
        strategy._queue(OLD_INBOX, expires_ms=600_000)
    else:
        strategy.control.queue(OLD_INBOX, durable=False, arguments={"x-expires": 600_000})
        strategy.control.bind_queue(OLD_INBOX, PRIVATE_EXCHANGE, OLD_INBOX)


def test_a_new_server_replies_to_an_old_clients_inbox_during_a_rolling_upgrade(
    secure: SecureNode, upgrading: str, login: Callable[..., Amqp1Driver]
) -> None:
    _old_inbox(login("compute-1", upgrading))
    login("conductor", upgrading).send_to_inbox(OLD_INBOX, b"reply")
    wait_until(lambda: secure.messages_in(OLD_INBOX, upgrading) == 1, timeout=20)


def test_an_old_server_replies_to_a_new_clients_inbox_during_a_rolling_upgrade(
    secure: SecureNode, upgrading: str, login: Callable[..., Amqp1Driver]
) -> None:
    got: list[bytes] = []
    inbox = login("compute-1", upgrading).open_inbox(got.append)
    old_server = login("conductor", upgrading)
    # the old release's reply route: the default exchange on 4.x, rpclib:private on 3.x
    route = (
        secure.queue_route(inbox.address)
        if secure.generation == 4
        else secure.exchange_route(PRIVATE_EXCHANGE, inbox.address)
    )
    assert _publish(old_server, route, b"reply") is None
    wait_until(lambda: got == [b"reply"], timeout=20)


def test_without_the_upgrade_option_an_old_clients_inbox_is_out_of_reach(
    secure: SecureNode, login: Callable[..., Amqp1Driver]
) -> None:
    """After the upgrade (accounts applied without ``legacy_default_exchange``), nothing
    reaches a queue through the default exchange, an old client's inbox included."""
    _old_inbox(login("compute-1"))
    before = secure.messages_in(OLD_INBOX)
    refused = _publish(login("conductor"), secure.queue_route(OLD_INBOX), b"reply")
    assert refused is not None
    assert secure.messages_in(OLD_INBOX) == before
