"""Attacks on rabbit:// by a compute node holding its own valid credentials.

A private RabbitMQ node gets one least-privilege account per principal from
``rpclib.transports.rabbit.access.apply`` (through the management API). The
rogue, ``compute-9``, is a real compute node: it serves its own queue and may
call the conductor. It talks to the broker with rpclib and with a plain
py-amqp client (whatever a compromised node could run).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import pytest
from amqp.exceptions import AccessRefused, PreconditionFailed

import rpclib
from rpclib.access import Access, Account
from rpclib.exceptions import InvalidTransportURL, TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.rabbit import RabbitDriver, naming
from rpclib.transports.rabbit import access as rabbit_access
from rpclib.transports.rabbit.consumer import SENDER
from tests.rpc.helpers import wait_until
from tests.security.conftest import RABBIT_VHOST
from tests.support.conductor_endpoint import RecordingConductor

ROGUE = "compute-9"
WAIT = 15.0


def compute(name: str) -> Access:
    return (
        Access(name)
        .serve(rpclib.Target(topic="compute", server=name))
        .call(rpclib.Target(topic="conductor"))
    )


ACCESS = [
    Access("conductor")
    .serve(rpclib.Target(topic="conductor", server="conductor-1"))
    .call(rpclib.Target(topic="compute"))
    .notify("notifications"),
    Access("billing").listen("notifications", "billing"),
    Access("scheduler").call(rpclib.Target(topic="conductor")),
    compute("compute-1"),
    compute("compute-2"),
    compute(ROGUE),
]
ACCOUNTS = [Account(a, f"{a.principal}-{uuid.uuid4().hex[:8]}") for a in ACCESS]
PASSWORDS = {a.access.principal: a.password for a in ACCOUNTS}

POLICY = rpclib.Policy(
    [
        rpclib.Allow("role:compute", namespace="conductor", methods=["heartbeat"]),
        rpclib.Allow("scheduler", namespace="conductor", methods=["*"]),
    ],
    roles={"compute": ["compute-*"]},
)


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def broker(rabbit_security_node: Any) -> dict[str, Any]:
    """The node, with every account applied; what tests need to log in."""
    node = rabbit_security_node
    _wait_port(node.management_port)
    admin = (
        f"rabbit://guest:guest@127.0.0.1:{node.port}/{RABBIT_VHOST}"
        f"?management=http://127.0.0.1:{node.management_port}"
    )
    rabbit_access.apply(admin, ACCOUNTS)
    return {"node": node, "port": node.port, "admin": admin}


def url_of(broker: dict[str, Any], principal: str) -> str:
    return f"rabbit://{principal}:{PASSWORDS[principal]}@127.0.0.1:{broker['port']}/{RABBIT_VHOST}"


@pytest.fixture
def driver_of(broker: dict[str, Any]) -> Iterator[Callable[[str], RabbitDriver]]:
    opened: list[RabbitDriver] = []

    def login(principal: str) -> RabbitDriver:
        driver = load_driver(url_of(broker, principal))
        assert isinstance(driver, RabbitDriver)
        opened.append(driver)
        return driver

    yield login
    for driver in opened:
        driver.close()


@pytest.fixture
def raw(broker: dict[str, Any]) -> Iterator[Callable[[str], Any]]:
    """A plain py-amqp connection logged in as a principal (what a rogue can run)."""
    opened: list[amqp.Connection] = []

    def login(principal: str) -> Any:
        conn = amqp.Connection(
            host=f"127.0.0.1:{broker['port']}",
            userid=principal,
            password=PASSWORDS[principal],
            virtual_host=RABBIT_VHOST,
        )
        conn.connect()
        opened.append(conn)
        return conn

    yield login
    for conn in opened:
        try:
            conn.close()
        except Exception:
            conn.collect()


class Inbox:
    """Collects Incoming messages (acked at once) for assertions."""

    def __init__(self) -> None:
        self.got: list[Incoming] = []
        self._event = threading.Condition()

    def __call__(self, incoming: Incoming) -> None:
        with self._event:
            self.got.append(incoming)
            self._event.notify_all()
        incoming.ack()

    def get(self) -> Incoming:
        with self._event:
            assert self._event.wait_for(lambda: self.got, WAIT), "nothing delivered"
            return self.got.pop(0)


def _messages(broker: dict[str, Any], queue: str) -> int:
    out = broker["node"].rabbitmqctl(
        "list_queues", "-p", RABBIT_VHOST, "-q", "--no-table-headers", "name", "messages"
    )
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"queue {queue} does not exist")


COMPUTE_1 = Address("rpclib", "compute", server="compute-1")
CONDUCTOR = Address("rpclib", "conductor", server="conductor-1")


# --- (a) the sender is the broker-verified user ------------------------------------------


def test_the_receiver_sees_the_broker_verified_user(driver_of: Any) -> None:
    inbox = Inbox()
    driver_of("conductor").listen(CONDUCTOR, inbox)
    driver_of("compute-1").send(CONDUCTOR, b"hello", guarantee=Guarantee.AT_LEAST_ONCE)
    driver_of(ROGUE).send(CONDUCTOR, b"me too", guarantee=Guarantee.AT_MOST_ONCE)
    assert {(m.body, m.sender) for m in (inbox.get(), inbox.get())} == {
        (b"hello", "compute-1"),
        (b"me too", ROGUE),
    }


def test_a_publish_with_a_forged_user_id_is_refused_by_the_broker(raw: Any, driver_of: Any) -> None:
    inbox = Inbox()
    driver_of("conductor").listen(CONDUCTOR, inbox)
    channel = raw(ROGUE).channel()
    with pytest.raises(PreconditionFailed, match="user_id"):
        channel.basic_publish_confirm(
            amqp.Message(b"as the scheduler", user_id="scheduler"),
            exchange="rpclib",
            routing_key=naming.routing_key(CONDUCTOR),
        )
    driver_of("scheduler").send(CONDUCTOR, b"the real one", guarantee=Guarantee.AT_LEAST_ONCE)
    real = inbox.get()
    assert (real.body, real.sender) == (b"the real one", "scheduler")
    assert inbox.got == []


def test_a_forged_user_id_through_the_driver_is_a_clear_transport_error(
    driver_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpclib.transports.rabbit import connection

    real_init = connection.PublishEncoder.__init__

    def forging(self: Any, channel_id: int, frame_max: int, user_id: str) -> None:
        real_init(self, channel_id, frame_max, "scheduler")

    driver_of("conductor").declare(CONDUCTOR)
    monkeypatch.setattr(connection.PublishEncoder, "__init__", forging)
    rogue = driver_of(ROGUE)
    with pytest.raises(TransportError, match="user_id"):
        rogue.send(CONDUCTOR, b"as the scheduler", guarantee=Guarantee.AT_LEAST_ONCE)


def test_a_forged_sender_header_is_not_believed(raw: Any, driver_of: Any) -> None:
    """Only a consumer's own requeued copies may name another sender (x-rpclib-sender)."""
    inbox = Inbox()
    driver_of("conductor").listen(CONDUCTOR, inbox)
    channel = raw(ROGUE).channel()
    channel.basic_publish(
        amqp.Message(b"requeued, honest", user_id=ROGUE, application_headers={SENDER: "scheduler"}),
        exchange="rpclib",
        routing_key=naming.routing_key(CONDUCTOR),
    )
    forged = inbox.get()
    assert (forged.body, forged.sender) == (b"requeued, honest", None)


def test_a_requeued_message_keeps_its_original_sender(driver_of: Any) -> None:
    got: list[Incoming] = []
    ready = threading.Event()

    def requeue_first(incoming: Incoming) -> None:
        got.append(incoming)
        if incoming.attempts == 1:
            incoming.requeue()
        else:
            incoming.ack()
            ready.set()

    driver_of("conductor").listen(CONDUCTOR, requeue_first)
    driver_of("compute-1").send(CONDUCTOR, b"again", guarantee=Guarantee.AT_LEAST_ONCE)
    assert ready.wait(WAIT)
    assert [(m.attempts, m.sender) for m in got] == [(1, "compute-1"), (2, "compute-1")]


# --- (b) another principal's server and reply queues --------------------------------------


def test_a_rogue_cannot_consume_another_nodes_server_queue(raw: Any, driver_of: Any) -> None:
    driver_of("compute-1").declare(COMPUTE_1)
    channel = raw(ROGUE).channel()
    with pytest.raises(AccessRefused):
        channel.basic_consume(naming.queue_name(COMPUTE_1), callback=lambda m: None)


def test_a_rogue_cannot_declare_another_nodes_server_queue(raw: Any) -> None:
    channel = raw(ROGUE).channel()
    with pytest.raises(AccessRefused):
        channel.queue_declare(
            naming.queue_name(Address("rpclib", "compute", server="compute-2")),
            durable=True,
            auto_delete=False,
        )


def test_a_rogue_cannot_bind_its_own_queue_to_another_nodes_key(raw: Any) -> None:
    conn = raw(ROGUE)
    channel = conn.channel()
    mine = naming.reply_queue(ROGUE)
    channel.queue_declare(mine, durable=False, exclusive=True, auto_delete=True)
    with pytest.raises(AccessRefused):
        channel.queue_bind(mine, "rpclib", naming.routing_key(COMPUTE_1))


def test_a_rogue_cannot_listen_as_another_node_through_rpclib(driver_of: Any) -> None:
    with pytest.raises(TransportError, match="403"):
        driver_of(ROGUE).listen(COMPUTE_1, Inbox())


def test_a_rogue_cannot_consume_another_principals_reply_queue(raw: Any, driver_of: Any) -> None:
    inbox = driver_of("conductor").open_inbox(lambda body: None)
    channel = raw(ROGUE).channel()
    with pytest.raises(AccessRefused):
        channel.basic_consume(inbox.address, callback=lambda m: None)


# --- (c) another node's builds -------------------------------------------------------------


def test_a_rogue_cannot_read_another_nodes_build_queue(
    raw: Any, driver_of: Any, broker: dict[str, Any]
) -> None:
    driver_of("compute-1").declare(COMPUTE_1)
    queue = naming.queue_name(COMPUTE_1)
    before = _messages(broker, queue)
    driver_of("conductor").send(
        COMPUTE_1, b"build: image url with token", guarantee=Guarantee.AT_LEAST_ONCE
    )
    assert _messages(broker, queue) == before + 1
    channel = raw(ROGUE).channel()
    with pytest.raises(AccessRefused):
        channel.basic_get(queue, no_ack=True)
    assert _messages(broker, queue) == before + 1


# --- (d) a server's policy over rabbit:// --------------------------------------------------


def test_a_policy_refuses_the_rogue_and_serves_allowed_principals(broker: dict[str, Any]) -> None:
    transports = {
        p: rpclib.get_transport(url_of(broker, p)) for p in ("conductor", "compute-1", ROGUE)
    }
    endpoint = RecordingConductor()
    server = rpclib.RPCServer(
        transports["conductor"],
        rpclib.Target(topic="conductor", server="conductor-1"),
        [endpoint],
        policy=POLICY,
    )
    server.start()
    try:

        def client(principal: str) -> rpclib.RPCClient:
            target = rpclib.Target(topic="conductor", namespace="conductor", version="1.0")
            return rpclib.RPCClient(transports[principal], target, timeout=WAIT)

        assert client("compute-1").call({"host": ROGUE}, "heartbeat") == "compute-1"
        with pytest.raises(rpclib.Forbidden) as refused:
            client(ROGUE).call({"host": "compute-1"}, "list_instances")
        assert (refused.value.principal, refused.value.method) == (ROGUE, "list_instances")
        assert client(ROGUE).call({"host": "compute-1"}, "heartbeat") == ROGUE
        assert endpoint.calls == [("heartbeat", "compute-1"), ("heartbeat", ROGUE)]
    finally:
        server.stop()
        server.wait()
        for transport in transports.values():
            transport.close()


class Usage:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.event = threading.Event()

    def info(self, ctx: Any, publisher: str, event: str, payload: Any, metadata: Any) -> None:
        self.seen.append((event, metadata["sender"]))
        self.event.set()


def test_a_notifier_that_may_only_send_finds_its_listeners_pool_kept_for_it(
    broker: dict[str, Any],
) -> None:
    conductor = rpclib.get_transport(url_of(broker, "conductor"))
    billing = rpclib.get_transport(url_of(broker, "billing"))
    try:
        notifier = rpclib.Notifier(conductor, "conductor.1", ensure_pools=["billing"], retry=0)
        notifier.info({}, "instance.create.end", {"n": 1})  # before billing ever listened
        notifier.close()
        usage = Usage()
        listener = rpclib.NotificationListener(
            billing, [rpclib.Target(topic="notifications")], [usage], pool="billing"
        )
        listener.start()
        try:
            assert usage.event.wait(WAIT), "the notification kept for the pool never arrived"
        finally:
            listener.stop()
            listener.wait()
        assert usage.seen == [("instance.create.end", "conductor")]
    finally:
        conductor.close()
        billing.close()


def test_a_rogue_cannot_emit_notifications(broker: dict[str, Any]) -> None:
    rogue = rpclib.get_transport(url_of(broker, ROGUE))
    try:
        with pytest.raises(TransportError, match="ACCESS_REFUSED|refused"):
            rogue.driver.send(
                Address("rpclib", "notifications.info"),
                b"forged",
                guarantee=Guarantee.AT_LEAST_ONCE,
            )
    finally:
        rogue.close()


# --- the accounts themselves ---------------------------------------------------------------


def test_apply_is_idempotent_and_the_cli_path_sets_the_same_permissions(
    broker: dict[str, Any],
) -> None:
    node = broker["node"]

    def listed() -> list[str]:
        permissions = node.rabbitmqctl(
            "list_permissions", "-p", RABBIT_VHOST, "-q", "--no-table-headers"
        )
        topics = node.rabbitmqctl(
            "list_topic_permissions", "-p", RABBIT_VHOST, "-q", "--no-table-headers"
        )
        return sorted(permissions.splitlines() + topics.splitlines())

    before = listed()
    cli_admin = f"rabbit://guest:guest@127.0.0.1:{broker['port']}/{RABBIT_VHOST}"
    rabbit_access.apply(cli_admin, ACCOUNTS, run=lambda args: node.rabbitmqctl(*args))
    assert listed() == before
    rabbit_access.apply(broker["admin"], ACCOUNTS)
    assert listed() == before


def test_a_password_that_looks_like_an_option_is_set_through_the_cli(
    broker: dict[str, Any],
) -> None:
    node = broker["node"]
    account = Account(Access("dash-user").call(rpclib.Target(topic="conductor")), "-p-secret")
    admin = f"rabbit://guest:guest@127.0.0.1:{broker['port']}/{RABBIT_VHOST}"
    for _ in range(2):  # add_user, then change_password
        rabbit_access.apply(admin, [account], run=lambda args: node.rabbitmqctl(*args))
        node.rabbitmqctl("authenticate_user", "--", "dash-user", "-p-secret")


def test_private_queue_names_start_with_the_principal(driver_of: Any) -> None:
    inbox = driver_of(ROGUE).open_inbox(lambda body: None)
    assert inbox.address.startswith(f"{naming.REPLY_PREFIX}{ROGUE}.")
    assert naming.fanout_queue(COMPUTE_1, ROGUE).startswith(f"rpclib.compute.fanout.{ROGUE}.")
    assert naming.adverts_queue("rpclib", ROGUE).startswith(f"rpclib.adverts.{ROGUE}.")


def test_a_compute_nodes_permissions_name_only_its_own_queues_and_keys() -> None:
    import re

    perms = rabbit_access.permissions(compute("compute-1").grants())
    readable = re.compile(perms.read)
    assert readable.match("rpclib.compute@compute-1")
    assert readable.match("rpclib.compute@compute-1.live")
    assert readable.match("rpclib.compute")  # the topic's shared queue it serves
    assert readable.match("rpclib.reply.compute-1.host.1.1")
    for other in ("rpclib.compute@compute-2", "rpclib.conductor", "rpclib.reply.compute-2.h.1.1"):
        assert not readable.match(other), other
    assert not re.compile(perms.configure).match("rpclib")  # no shared exchange
    topics = {exchange: (write, read) for exchange, write, read in perms.topics}
    write, read = topics["rpclib"]
    assert re.match(write, "conductor@conductor-1") and not re.match(write, "compute@compute-2")
    assert re.match(read, "compute@compute-1") and not re.match(read, "compute@compute-2")


def test_a_bad_management_option_is_refused_naming_it() -> None:
    with pytest.raises(InvalidTransportURL, match="management="):
        rabbit_access.render("rabbit://guest:guest@h/?management=ftp://h", ACCOUNTS)


def test_render_prints_the_commands_apply_runs() -> None:
    text = rabbit_access.render("rabbit://guest:guest@h/v", ACCOUNTS[:1])
    assert "rabbitmqctl set_permissions -p v conductor " in text
    assert "rabbitmqctl set_topic_permissions -p v conductor rpclib " in text


# --- (e) no writing into queues by name: rpclib.queues, not the default exchange ------------

BILLING_POOL = naming.queue_name(Address("rpclib", "notifications.info"), "billing")
QUEUES = naming.QUEUES_EXCHANGE


def _key(exchange: str, queue: str) -> str:
    """The routing key that reaches ``queue`` by name through ``exchange``."""
    return naming.queue_key(queue) if exchange == QUEUES else queue


def _publish(raw: Any, principal: str, exchange: str, key: str, body: bytes, **props: Any) -> None:
    """Publish as ``principal`` with a plain client and wait for the broker's confirm;
    a refusal raises (AccessRefused: the broker's 403)."""
    channel = raw(principal).channel()
    channel.basic_publish_confirm(
        amqp.Message(body, user_id=principal, **props), exchange=exchange, routing_key=key
    )


@pytest.mark.parametrize("exchange", ["", QUEUES], ids=["default-exchange", "rpclib.queues"])
def test_a_rogue_cannot_put_a_message_into_another_nodes_build_queue(
    raw: Any, driver_of: Any, broker: dict[str, Any], exchange: str
) -> None:
    driver_of("compute-1").declare(COMPUTE_1)
    queue = naming.queue_name(COMPUTE_1)
    before = _messages(broker, queue)
    with pytest.raises(AccessRefused):
        _publish(raw, ROGUE, exchange, _key(exchange, queue), b"build: forged")
    assert _messages(broker, queue) == before


@pytest.mark.parametrize("exchange", ["", QUEUES], ids=["default-exchange", "rpclib.queues"])
def test_a_rogue_cannot_put_a_notification_into_billings_pool(
    raw: Any, broker: dict[str, Any], exchange: str
) -> None:
    """The pool's topic permissions refuse the rogue on ``rpclib``; by name is no way round."""
    before = _messages(broker, BILLING_POOL)
    with pytest.raises(AccessRefused):
        _publish(
            raw,
            ROGUE,
            exchange,
            _key(exchange, BILLING_POOL),
            b'{"event_type": "instance.create.end"}',
        )
    assert _messages(broker, BILLING_POOL) == before


def test_a_rogue_cannot_requeue_into_another_nodes_queue(
    raw: Any, driver_of: Any, broker: dict[str, Any]
) -> None:
    """A requeued copy (attempts recorded, original sender named) goes only to one's own queues."""
    driver_of("compute-1").declare(COMPUTE_1)
    queue = naming.queue_name(COMPUTE_1)
    before = _messages(broker, queue)
    with pytest.raises(AccessRefused):
        _publish(
            raw,
            ROGUE,
            QUEUES,
            naming.queue_key(queue),
            b"build: forged",
            application_headers={"x-rpclib-attempts": 1, SENDER: "conductor"},
        )
    assert _messages(broker, queue) == before


def test_a_rogue_cannot_reply_through_the_default_exchange(raw: Any, driver_of: Any) -> None:
    got: list[bytes] = []
    inbox = driver_of("conductor").open_inbox(got.append)
    with pytest.raises(AccessRefused):
        _publish(raw, ROGUE, "", inbox.address, b"forged reply")
    assert got == []


def test_a_pure_caller_cannot_write_into_a_reply_queue(raw: Any, driver_of: Any) -> None:
    """Only accounts that serve something send replies; a server's reply still arrives."""
    got: list[bytes] = []
    inbox = driver_of("conductor").open_inbox(got.append)
    with pytest.raises(AccessRefused):
        _publish(raw, "scheduler", QUEUES, naming.queue_key(inbox.address), b"forged reply")
    driver_of("compute-1").send_to_inbox(inbox.address, b"the real reply")
    wait_until(lambda: got != [], WAIT, "the server's reply")
    assert got == [b"the real reply"]


def test_an_older_releases_inbox_is_refused_with_advice_without_old_peers(driver_of: Any) -> None:
    """Without ?old_peers=true a driver never publishes through the default exchange."""
    old_style = naming.REPLY_PREFIX + naming.private_name("scheduler")
    with pytest.raises(Undeliverable, match="old_peers=true"):
        driver_of("compute-1").send_to_inbox(old_style, b"reply")


# --- (f) adverts: only as the servers one serves ------------------------------------------


class Adverts:
    """What a watch reported, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes | None]] = []

    def __call__(self, server: str, body: bytes | None) -> None:
        self.seen.append((server, body))


@pytest.mark.parametrize(
    "key, headers",
    [
        (naming.advert_key("compute", "compute-1"), {"x-rpclib-withdrawn": True}),
        ("compute", {"x-rpclib-server": "compute-1", "x-rpclib-withdrawn": True}),
    ],
    ids=["keyed-by-server", "keyed-by-topic-as-older-releases"],
)
def test_a_rogue_cannot_withdraw_another_nodes_advert(
    raw: Any, driver_of: Any, key: str, headers: dict[str, Any]
) -> None:
    adverts = Adverts()
    driver_of("compute-1").advertise(COMPUTE_1, b"compute-1 here", ttl=60)
    driver_of("conductor").watch_adverts("rpclib", "compute", adverts)
    wait_until(lambda: ("compute-1", b"compute-1 here") in adverts.seen, WAIT, "the advert")
    with pytest.raises(AccessRefused):
        _publish(raw, ROGUE, "rpclib.adverts", key, b"", application_headers=headers)
    # The rogue's own advert, published after the refused withdrawal, reaches the watch.
    _publish(
        raw,
        ROGUE,
        "rpclib.adverts",
        naming.advert_key("compute", ROGUE),
        b"rogue here",
        application_headers={"x-rpclib-ttl": 60.0},
    )
    wait_until(lambda: (ROGUE, b"rogue here") in adverts.seen, WAIT, "the rogue's own advert")
    assert ("compute-1", None) not in adverts.seen


def test_a_rogue_cannot_advertise_as_another_node(raw: Any) -> None:
    with pytest.raises(AccessRefused):
        _publish(
            raw,
            ROGUE,
            "rpclib.adverts",
            naming.advert_key("compute", "compute-1"),
            b"send builds to me",
            application_headers={"x-rpclib-ttl": 60.0},
        )


def test_a_node_advertises_and_withdraws_as_itself(driver_of: Any) -> None:
    adverts = Adverts()
    compute_1 = driver_of("compute-1")
    compute_1.advertise(COMPUTE_1, b"before the watch", ttl=60)
    driver_of("conductor").watch_adverts("rpclib", "compute", adverts)
    wait_until(lambda: ("compute-1", b"before the watch") in adverts.seen, WAIT, "the snapshot")
    compute_1.withdraw(COMPUTE_1)
    wait_until(lambda: ("compute-1", None) in adverts.seen, WAIT, "the withdrawal")


# --- (g) what every account still does under least privilege --------------------------------


def test_a_call_is_answered_under_least_privilege(broker: dict[str, Any]) -> None:
    compute_1 = rpclib.get_transport(url_of(broker, "compute-1"))
    conductor = rpclib.get_transport(url_of(broker, "conductor"))
    server = rpclib.RPCServer(
        conductor,
        rpclib.Target(topic="conductor", server="conductor-1"),
        [RecordingConductor()],
        policy=POLICY,
    )
    server.start()
    try:
        target = rpclib.Target(topic="conductor", namespace="conductor", version="1.0")
        client = rpclib.RPCClient(compute_1, target, timeout=WAIT)
        assert client.call({}, "heartbeat") == "compute-1"
        assert client.prepare(server="conductor-1").call({}, "heartbeat") == "compute-1"
    finally:
        server.stop()
        server.wait()
        compute_1.close()
        conductor.close()


@pytest.mark.parametrize("guarantee", [Guarantee.AT_LEAST_ONCE, Guarantee.AT_MOST_ONCE])
def test_a_server_dead_letters_under_least_privilege(
    driver_of: Any, broker: dict[str, Any], guarantee: Guarantee
) -> None:
    body = f"refused {uuid.uuid4().hex}".encode()
    refused = threading.Event()

    def refuse(incoming: Incoming) -> None:
        incoming.dead_letter("not for me")
        refused.set()

    driver_of("conductor").listen(CONDUCTOR, refuse)
    driver_of("compute-1").send(CONDUCTOR, body, guarantee=guarantee)
    assert refused.wait(WAIT)
    admin = load_driver(f"rabbit://guest:guest@127.0.0.1:{broker['port']}/{RABBIT_VHOST}")
    try:
        wait_until(
            lambda: any(d.body == body for d in admin.dead_letters(limit=10_000)),
            WAIT,
            "the dead letter",
        )
        (letter,) = [d for d in admin.dead_letters(limit=10_000) if d.body == body]
        assert letter.reason == "not for me"
    finally:
        admin.close()


# --- (h) the derived permissions themselves ------------------------------------------------


def _topics(perms: Any) -> dict[str, tuple[str, str]]:
    return {exchange: (write, read) for exchange, write, read in perms.topics}


@pytest.mark.parametrize("access", ACCESS, ids=[a.principal for a in ACCESS])
def test_no_account_may_write_the_default_exchange(access: Access) -> None:
    import re

    assert not re.match(rabbit_access.permissions(access.grants()).write, "amq.default")
    old = rabbit_access.permissions(access.grants(), old_peers=True)
    assert re.match(old.write, "amq.default")  # only during a rolling upgrade


def test_reply_keys_are_for_accounts_that_serve_and_requeues_for_their_own_queues() -> None:
    import re

    inbox = naming.queue_key(naming.reply_queue("scheduler"))
    compute_1 = _topics(rabbit_access.permissions(compute("compute-1").grants()))[QUEUES][0]
    assert re.match(compute_1, inbox)
    assert re.match(compute_1, naming.queue_key(naming.DEAD_LETTER_QUEUE))
    assert re.match(compute_1, naming.queue_key("rpclib.compute@compute-1"))
    assert not re.match(compute_1, naming.queue_key("rpclib.compute@compute-2"))
    assert not re.match(compute_1, naming.queue_key("rpclib.reply.scheduler.h.1.1"))  # no .q
    caller = _topics(rabbit_access.permissions(ACCESS[2].grants()))[QUEUES][0]
    assert not re.match(caller, inbox)
    assert re.match(caller, naming.queue_key(naming.DEAD_LETTER_QUEUE))


def test_advert_keys_name_exactly_the_servers_an_account_serves() -> None:
    import re

    perms = rabbit_access.permissions(compute("compute-1").grants())
    write = _topics(perms)["rpclib.adverts"][0]
    assert re.match(write, naming.advert_key("compute", "compute-1"))
    for other in (naming.advert_key("compute", "compute-2"), "compute", "compute.@.compute-1x"):
        assert not re.match(write, other), other
    conductor_read = _topics(rabbit_access.permissions(ACCESS[0].grants()))["rpclib.adverts"][1]
    assert re.match(conductor_read, naming.advert_binding("compute"))
    assert not re.match(conductor_read, "compute")


def test_a_queue_is_addressed_on_rpclib_queues_by_one_word_naming_it_alone() -> None:
    names = [
        naming.reply_queue(ROGUE),
        naming.queue_name(COMPUTE_1, live=True),
        BILLING_POOL,
        naming.DEAD_LETTER_QUEUE,
        naming.fanout_queue(COMPUTE_1, ROGUE),
    ]
    keys = [naming.queue_key(name) for name in names]
    assert all("." not in key for key in keys)
    assert [naming.queue_of_key(key) for key in keys] == names
