"""The RabbitMQ driver on the real broker: the shared contract, then what only RabbitMQ has.

Every test runs in the session's own vhost (``rabbit_url``) and gets fresh
exchange names from the contract's address factory, so tests never see each
other's queues. The contract, the queue types and the broker's refusals are
tested on both RabbitMQ generations: the shared 3.10 and the session's
private 4.x node with every deprecated feature denied (``broker``).
Broker-side checks use ``rabbitmqctl`` scoped to that vhost; recovery is
provoked with ``rabbitmqctl close_all_connections`` on the vhost only, never
by touching the broker process.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest

import rpclib
from rpclib.exceptions import InvalidTransportURL, TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.base import Address, ConnectionEvent, Guarantee, Incoming
from rpclib.transports.rabbit import RabbitDriver, naming
from rpclib.transports.rabbit.options import parse_options
from rpclib.transports.url import parse_url
from tests.support.rabbit import BROKER, list_queues, rabbitmqctl
from tests.support.rabbit_brokers import Broker
from tests.transports.driver_contract import (
    AddressFactory,
    AdvertCollector,
    Collector,
    DriverContract,
    EventCollector,
    InboxCollector,
    MakeDriver,
    fanout,
)

WAIT = 15.0
QUIET = 0.3


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def make_rabbit(rabbit_url: str) -> Iterator[Callable[..., RabbitDriver]]:
    """``make_rabbit(query="")`` connects a new driver to the session vhost; all closed after."""
    opened: list[RabbitDriver] = []

    def make(query: str = "") -> RabbitDriver:
        driver = load_driver(rabbit_url + (f"?{query}" if query else ""))
        assert isinstance(driver, RabbitDriver)
        opened.append(driver)
        return driver

    yield make
    for driver in opened:
        driver.close()


@pytest.fixture
def names() -> AddressFactory:
    return AddressFactory(exchange=f"rabbit-{time.time_ns() % 10**10}")


def queue_properties(vhost: str) -> dict[str, dict[str, str]]:
    """Queue name -> its broker-side properties (type, durable, auto_delete, exclusive)."""
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "-q", "--no-table-headers",
        "name", "type", "durable", "auto_delete", "exclusive", "consumers", "messages",
    )  # fmt: skip
    props: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("\t")  # quorum queues leave "exclusive" empty
        if len(parts) == 7:
            name, kind, durable, auto_delete, exclusive, consumers, messages = parts
            props[name] = {
                "type": kind,
                "durable": durable,
                "auto_delete": auto_delete,
                "exclusive": exclusive,
                "consumers": consumers,
                "messages": messages,
            }
    return props


def connection_count(vhost: str) -> int:
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "vhost")
    return sum(1 for line in out.splitlines() if line.strip() == vhost)


def drop_connections(vhost: str) -> None:
    """Close every client connection of ``vhost`` broker-side (the broker keeps running)."""
    rabbitmqctl("close_all_connections", "-p", vhost, "test: simulated connection loss")


# --- the contract -------------------------------------------------------------------------


class TestRabbitContract(DriverContract):
    """Every contract test on the real broker.

    Replies are not confirmed (no round trip per reply): a reply to a closed
    inbox is logged and counted, not raised (see TestPublishPaths).
    """

    wait = WAIT
    quiet_period = QUIET
    supports_closed_inbox_detection = False

    @pytest.fixture
    def make_driver(self, make_rabbit: Callable[..., RabbitDriver]) -> MakeDriver:
        return make_rabbit


class TestRabbitContractOnQuorumQueues(DriverContract):
    """The contract again with quorum durable queues (exact delivery counts, per-consumer QoS)."""

    wait = WAIT
    quiet_period = QUIET
    supports_closed_inbox_detection = False

    @pytest.fixture
    def make_driver(self, make_rabbit: Callable[..., RabbitDriver]) -> MakeDriver:
        return lambda: make_rabbit("queue_type=quorum")


# --- names and queue types -----------------------------------------------------------------


class TestRabbit4Contract(DriverContract):
    """The contract on RabbitMQ 4 with every deprecated feature denied (4.3's defaults)."""

    wait = WAIT
    quiet_period = QUIET
    supports_closed_inbox_detection = False

    @pytest.fixture
    def make_driver(self, rabbit4_url: str) -> Iterator[MakeDriver]:
        with driver_factory(rabbit4_url) as make:
            yield make


class TestRabbit4ContractOnQuorumQueues(DriverContract):
    """The contract on RabbitMQ 4 with quorum queues (what a cluster URL gets by default)."""

    wait = WAIT
    quiet_period = QUIET
    supports_closed_inbox_detection = False

    @pytest.fixture
    def make_driver(self, rabbit4_url: str) -> Iterator[MakeDriver]:
        with driver_factory(rabbit4_url + "?queue_type=quorum") as make:
            yield make


@contextlib.contextmanager
def driver_factory(url: str) -> Iterator[Callable[..., RabbitDriver]]:
    opened: list[RabbitDriver] = []

    def make(query: str = "") -> RabbitDriver:
        driver = load_driver(url + (("&" if "?" in url else "?") + query if query else ""))
        assert isinstance(driver, RabbitDriver)
        opened.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in opened:
            driver.close()


@pytest.fixture
def on_broker(broker: Broker) -> Iterator[Callable[..., RabbitDriver]]:
    """``on_broker(query="")``: a driver on the ``broker`` under test; all closed after."""
    with driver_factory(broker.url) as make:
        yield make


class ConnectionEvents:
    """Records a driver's ConnectionEvents; waits for one of a kind."""

    def __init__(self, driver: RabbitDriver) -> None:
        self.events: queue.Queue[ConnectionEvent] = queue.Queue()
        driver.add_event_listener(self.events.put)

    def wait_for(self, kind: str, timeout: float = WAIT) -> ConnectionEvent:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind!r} connection event within {timeout}s") from None
            if event.kind == kind:
                return event


def quoted_reason(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")


class TestQueueTypes:
    """Queue types by purpose, on RabbitMQ 3.10 and on 4.x with every deprecated feature denied."""

    def test_a_server_starts_and_serves_calls_and_casts(self, broker: Broker) -> None:
        transport = rpclib.get_transport(broker.url)
        topic = f"t{time.time_ns() % 10**10}"

        class Echo:
            def echo(self, ctx: dict[str, Any], value: int) -> int:
                return value

        server = rpclib.RPCServer(transport, rpclib.Target(topic=topic, server="s1"), [Echo()])
        server.start()
        try:
            for target in (rpclib.Target(topic=topic), rpclib.Target(topic=topic, server="s1")):
                client = rpclib.RPCClient(transport, target, timeout=WAIT)
                assert client.call({}, "echo", value=7) == 7
                client.cast({}, "echo", value=8)
        finally:
            server.stop()
            server.wait()
            transport.close()

    def test_each_queue_has_the_properties_of_its_purpose(
        self, on_broker: Callable[..., RabbitDriver], names: AddressFactory, broker: Broker
    ) -> None:
        kinds = open_every_kind_of_queue(on_broker(), names)
        queues = broker.queues()
        # (type, durable, auto_delete, exclusive, x-expires) per docs/transports/rabbit.md
        expected = {
            "topic": ("classic", "true", "false", "false", None),
            "group": ("classic", "true", "false", "false", None),
            "server": ("classic", "true", "false", "false", None),
            "topic live": ("classic", "true", "true", "false", "10000"),
            "group live": ("classic", "true", "true", "false", "10000"),
            "server live": ("classic", "false", "true", "true", None),
            "inbox": ("classic", "true", "false", "false", "3600000"),
            "fanout": ("classic", "false", "true", "true", None),
            "adverts": ("classic", "false", "true", "true", None),
        }
        for kind, (qtype, durable, auto_delete, exclusive, expires) in expected.items():
            props = by_prefix(queues, kinds[kind])
            got = (props["type"], props["durable"], props["auto_delete"], props["exclusive"])
            assert got == (qtype, durable, auto_delete, exclusive), kind
            assert ("x-expires" in props["arguments"]) == (expires is not None), kind
            if expires is not None:
                assert f'"x-expires",{expires}' in props["arguments"].replace(" ", ""), kind
            for denied in ("x-queue-master-locator", "x-queue-mode", "x-queue-version"):
                assert denied not in props["arguments"], kind

    def test_quorum_makes_every_shared_queue_quorum(
        self, on_broker: Callable[..., RabbitDriver], names: AddressFactory, broker: Broker
    ) -> None:
        kinds = open_every_kind_of_queue(on_broker("queue_type=quorum"), names)
        queues = broker.queues()
        for kind in ("topic", "group", "server", "topic live", "group live"):
            props = by_prefix(queues, kinds[kind])
            assert (props["type"], props["durable"], props["auto_delete"]) == (
                "quorum",
                "true",
                "false",
            ), kind
        assert "x-expires" in by_prefix(queues, kinds["topic live"])["arguments"]
        for kind in ("server live", "inbox", "fanout", "adverts"):
            assert by_prefix(queues, kinds[kind])["type"] == "classic", kind

    def test_auto_picks_quorum_when_the_url_lists_several_hosts(
        self, broker: Broker, names: AddressFactory
    ) -> None:
        host = broker.url.split("@", 1)[1].split("/", 1)[0]
        url = broker.url.replace(f"@{host}/", f"@{host},guest:guest@{host}/")
        topic = names()
        with driver_factory(url) as make:
            driver = make()
            assert (driver.options.queue_type, len(driver.options.hosts)) == ("quorum", 2)
            driver.listen(topic, Collector(WAIT))
            assert broker.queues()[f"{topic.exchange}.{topic.topic}"]["type"] == "quorum"

    def test_the_last_server_leaving_a_quorum_topic_deletes_its_live_queue(
        self, on_broker: Callable[..., RabbitDriver], names: AddressFactory, broker: Broker
    ) -> None:
        topic = names()
        first, second = (on_broker("queue_type=quorum") for _ in range(2))
        subs = [driver.listen(topic, Collector(WAIT)) for driver in (first, second)]
        live = f"{topic.exchange}.{topic.topic}.live"
        subs[0].close()
        assert live in broker.queues()  # the other server still consumes it
        subs[1].close()
        assert live not in broker.queues()
        with pytest.raises(Undeliverable):
            first.send(topic, b"x", guarantee=Guarantee.AT_MOST_ONCE)


class TestRefusals:
    """What a broker's refusal to declare does, on both generations."""

    def test_a_queue_of_another_type_is_refused_at_once_quoting_the_broker(
        self, on_broker: Callable[..., RabbitDriver], names: AddressFactory, broker: Broker
    ) -> None:
        topic = names()
        on_broker("queue_type=quorum").declare(topic)
        driver = on_broker("queue_type=classic")
        connections = broker.connection_count()
        started = time.monotonic()
        with pytest.raises(TransportError) as excinfo:
            driver.listen(topic, Collector(WAIT))
        assert time.monotonic() - started < 5  # not the 15 s send_timeout
        message = quoted_reason(excinfo.value)
        assert "406" in message and "PRECONDITION_FAILED" in message
        assert f"{topic.exchange}.{topic.topic}" in message
        assert "queue_type=classic" in message and "delete the queue" in message
        time.sleep(QUIET)  # a reconnect loop would show up as new connections
        assert broker.connection_count() == connections
        sub = on_broker("queue_type=quorum").listen(topic, Collector(WAIT))
        sub.close()  # the driver that refused still serves what it can

    def test_no_permission_to_declare_is_refused_naming_the_permission(
        self, broker: Broker, limited_user: Callable[[str], str], names: AddressFactory
    ) -> None:
        url = limited_user("^$")
        with driver_factory(url) as make:
            driver = make()
            with pytest.raises(TransportError) as excinfo:
                driver.listen(names(), Collector(WAIT))
        message = quoted_reason(excinfo.value)
        assert "403" in message and "ACCESS_REFUSED" in message and "permission" in message

    def test_a_refused_restore_is_retried_until_it_succeeds_and_reported(
        self,
        broker: Broker,
        limited_user: Callable[[str], str],
        on_broker: Callable[..., RabbitDriver],
        names: AddressFactory,
    ) -> None:
        url = limited_user(".*")
        topic = names()
        with driver_factory(url + "?retry_backoff=0.05&retry_backoff_max=0.5") as make:
            driver = make()
            events = ConnectionEvents(driver)
            got = Collector(WAIT)
            driver.listen(topic, got)
            user = url.split("//", 1)[1].split(":", 1)[0]
            broker.ctl("set_permissions", "-p", broker.vhost, user, "^$", ".*", ".*")
            broker.drop_connections()
            refused = events.wait_for("not restored")
            assert "403" in refused.detail and topic.topic in refused.what
            broker.ctl("set_permissions", "-p", broker.vhost, user, ".*", ".*", ".*")
            assert topic.topic in events.wait_for("restored").what
            on_broker().send(topic, b"after", guarantee=Guarantee.AT_LEAST_ONCE)
            assert got.get().body == b"after"

    def test_a_second_server_of_the_same_name_waits_for_the_first_to_go(
        self, on_broker: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        server = names.server(names(), "s1")
        old = on_broker()
        old_sub = old.listen(server, Collector(WAIT))
        new = on_broker("retry_backoff=0.05&retry_backoff_max=0.5")
        events = ConnectionEvents(new)
        got = Collector(WAIT)
        new.listen(server, got)  # RESOURCE_LOCKED: retried in the background, not raised
        assert "405" in events.wait_for("not restored").detail
        old_sub.close()
        events.wait_for("restored")
        new.send(server, b"call", guarantee=Guarantee.AT_MOST_ONCE)
        assert got.get().body == b"call"

    def test_an_inbox_whose_queue_cannot_be_declared_again_takes_a_fresh_name(
        self,
        broker: Broker,
        limited_user: Callable[[str], str],
        on_broker: Callable[..., RabbitDriver],
    ) -> None:
        url = limited_user(".*")
        user = url.split("//", 1)[1].split(":", 1)[0]
        with driver_factory(url + "?retry_backoff=0.05&retry_backoff_max=0.5") as make:
            driver = make()
            events: EventCollector[str] = EventCollector(WAIT)
            replies = InboxCollector(WAIT)
            inbox = driver.open_inbox(replies, events.put)
            old = inbox.address
            connection = ConnectionEvents(driver)
            # Hold the driver off while an operator replaces its reply queue by an inequivalent one.
            broker.ctl("set_permissions", "-p", broker.vhost, user, "^$", ".*", ".*")
            broker.drop_connections()
            assert events.get() == "disconnected"
            connection.wait_for("not restored")
            other = amqp.Connection(
                broker.url.split("@", 1)[1].split("/", 1)[0], virtual_host=broker.vhost
            )
            other.connect()
            try:
                channel = other.channel()
                channel.queue_delete(old)
                channel.queue_declare(old, durable=True, auto_delete=False)  # no x-expires
            finally:
                other.close()
            broker.ctl("set_permissions", "-p", broker.vhost, user, ".*", ".*", ".*")
            assert events.get() == "lost"
            assert inbox.address != old and inbox.address.startswith("rpclib.reply.")
            on_broker().send_to_inbox(inbox.address, b"to the new queue")
            assert replies.get() == b"to the new queue"

    def test_a_live_queue_left_by_an_older_rpclib_is_used_as_it_is(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory, rabbit_vhost: str
    ) -> None:
        # 3.10 only: RabbitMQ 4.3 denies the old kind (non-durable, not exclusive).
        topic = names()
        live = f"{topic.exchange}.{topic.topic}.live"
        old = amqp.Connection(BROKER, virtual_host=rabbit_vhost)
        old.connect()
        try:
            channel = old.channel()
            channel.queue_declare(live, durable=False, auto_delete=True)
            channel.basic_consume(live, callback=lambda message: None)  # an old server
            got = Collector(WAIT)
            make_rabbit().listen(topic, got)
            assert queue_properties(rabbit_vhost)[live]["durable"] == "false"
            make_rabbit().send(topic, b"at least once", guarantee=Guarantee.AT_LEAST_ONCE)
            assert got.get().body == b"at least once"
        finally:
            old.close()


@pytest.fixture
def limited_user(broker: Broker) -> Iterator[Callable[[str], str]]:
    """``limited_user(configure)``: a URL of a new user with that configure permission."""
    user = f"rpclib-limited-{time.time_ns() % 10**9}"
    broker.ctl("add_user", user, "secret")

    def make(configure: str) -> str:
        broker.ctl("set_permissions", "-p", broker.vhost, user, configure, ".*", ".*")
        return broker.url.replace("guest:guest@", f"{user}:secret@")

    yield make
    broker.ctl("delete_user", user)


def open_every_kind_of_queue(driver: RabbitDriver, names: AddressFactory) -> dict[str, str]:
    """Listen, open an inbox and watch adverts; the queue name of each kind."""
    topic = names()
    x, t = topic.exchange, topic.topic
    driver.listen(topic, Collector(WAIT))
    driver.listen(topic, Collector(WAIT), group="billing")
    driver.listen(names.server(topic, "s1"), Collector(WAIT))
    driver.listen(fanout(topic), Collector(WAIT))
    inbox = driver.open_inbox(InboxCollector(WAIT))
    driver.watch_adverts(x, t, AdvertCollector(WAIT))
    return {
        "topic": f"{x}.{t}",
        "topic live": f"{x}.{t}.live",
        "group": f"{x}.{t}#billing",
        "group live": f"{x}.{t}#billing.live",
        "server": f"{x}.{t}@s1",
        "server live": f"{x}.{t}@s1.live",
        "inbox": inbox.address,
        "fanout": f"{x}.{t}.fanout.",
        "adverts": f"{x}.adverts.",
    }


def by_prefix(queues: dict[str, dict[str, str]], name: str) -> dict[str, str]:
    """The queue ``name``, or the one queue named ``name<suffix>`` if ``name`` ends with a dot."""
    if not name.endswith("."):
        return queues[name]
    (found,) = [n for n in queues if n.startswith(name)]
    return queues[found]


class TestNames:
    def test_queues_and_exchanges_are_named_as_documented(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory, rabbit_vhost: str
    ) -> None:
        kinds = open_every_kind_of_queue(make_rabbit(), names)
        queues = queue_properties(rabbit_vhost)
        for kind in ("topic", "topic live", "group", "group live", "server", "server live"):
            assert kinds[kind] in queues, kind
        assert kinds["inbox"].startswith("rpclib.reply.") and kinds["inbox"] in queues
        for kind in ("fanout", "adverts"):
            assert len([n for n in queues if n.startswith(kinds[kind])]) == 1, kind
        x = kinds["topic"].split(".")[0]
        exchanges = rabbitmqctl(
            "list_exchanges", "-p", rabbit_vhost, "-q", "--no-table-headers", "name", "type"
        )
        types = dict(line.split() for line in exchanges.splitlines() if len(line.split()) == 2)
        assert types[x] == "topic"
        assert types[kinds["fanout"].rstrip(".")] == "fanout"
        assert types[f"{x}.adverts"] == "topic"

    @pytest.mark.parametrize(
        ("address", "group", "problem"),
        [
            (Address("ex", "a@b"), None, "'@'"),
            (Address("ex", "a#b"), None, "'#'"),
            (Address("ex", "a.*"), None, "'\\*'"),
            (Address("ex", "t.live"), None, "suffix"),
            (Address("ex", "t.sync"), None, "suffix"),
            (Address("ex", "t", server="s.live"), None, "suffix"),
            (Address("ex", "t"), "g#1", "'#'"),
            (Address("amq.topic", "t"), None, "amq."),
            (Address("rpclib", "reply.x"), None, "collide"),
            (Address("rpclib", "dead-letters"), None, "collide"),
            (Address("rpclib", "dead-letters.bounded"), None, "collide"),
            (Address("ex", "t" * 300), None, "255 bytes"),
        ],
    )
    def test_addresses_whose_names_would_collide_are_refused(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        address: Address,
        group: str | None,
        problem: str,
    ) -> None:
        with pytest.raises(ValueError, match=problem):
            make_rabbit().listen(address, Collector(WAIT), group=group)


# --- publish paths -----------------------------------------------------------------------------


class TestPublishPaths:
    def test_call_to_absent_server_is_reported_through_the_callback(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        reports: EventCollector[Undeliverable] = EventCollector(WAIT)
        make_rabbit().send(
            names.server(topic, "gone"),
            b"call",
            guarantee=Guarantee.AT_MOST_ONCE,
            on_undeliverable=reports.put,
        )  # returns at once: the return comes later, on the I/O thread
        report = reports.get()
        assert isinstance(report, Undeliverable) and "gone" in str(report)

    def test_returns_reach_the_callback_of_their_own_message(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        live = Collector(WAIT)
        make_rabbit().listen(topic, live)
        sender = make_rabbit()
        reported: queue.Queue[int] = queue.Queue()

        def report_as(i: int) -> Callable[[Undeliverable], None]:
            return lambda exc: reported.put(i)

        for i in range(40):
            target = topic if i % 2 == 0 else names.server(topic, f"absent{i}")
            sender.send(
                target, b"%d" % i, guarantee=Guarantee.AT_MOST_ONCE, on_undeliverable=report_as(i)
            )
        delivered = sorted(int(m.body) for m in live.get_many(20))
        returned = sorted(reported.get(timeout=WAIT) for _ in range(20))
        assert delivered == list(range(0, 40, 2))
        assert returned == list(range(1, 40, 2))
        live.assert_nothing(QUIET)

    def test_delivered_calls_leave_no_return_entries_once_their_deadline_passed(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        # Path 1 has no confirms: a call's entry waits for a return that never comes
        # for a delivered message, and goes when its caller would have given up.
        topic = names()
        live = Collector(WAIT)
        make_rabbit().listen(topic, live)
        sender = make_rabbit()
        for i in range(50):
            sender.send(
                topic,
                b"%d" % i,
                guarantee=Guarantee.AT_MOST_ONCE,
                expires_at=time.time() + 0.5,
                on_undeliverable=lambda exc: None,
            )
        assert len(live.get_many(50)) == 50
        publisher = sender._session.publisher
        wait_until(lambda: not publisher._by_id and not publisher._expiry, "empty tables")

    def test_concurrent_writers_on_the_consumer_connection_keep_frames_intact(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        # Path-1 publishes of multi-frame bodies from several threads, on the same
        # connection that acks deliveries from other threads: interleaved frames
        # would corrupt bodies or kill the connection.
        driver = make_rabbit()
        topic = names()
        received: queue.Queue[bytes] = queue.Queue()
        pending: queue.Queue[Incoming] = queue.Queue()

        def ack_later() -> None:
            while (incoming := pending.get()) is not None:
                received.put(incoming.body)
                incoming.ack()

        ackers = [threading.Thread(target=ack_later) for _ in range(3)]
        for acker in ackers:
            acker.start()
        driver.listen(topic, pending.put, prefetch=16)
        bodies = [bytes([n]) * (200_000 + n) for n in range(4)]
        errors: list[BaseException] = []

        def produce(body: bytes) -> None:
            try:
                for _ in range(25):
                    driver.send(
                        topic,
                        body,
                        guarantee=Guarantee.AT_MOST_ONCE,
                        on_undeliverable=errors.append,
                    )
            except BaseException as exc:
                errors.append(exc)

        producers = [threading.Thread(target=produce, args=(b,)) for b in bodies]
        for producer in producers:
            producer.start()
        for producer in producers:
            producer.join(WAIT)
        try:
            got = [received.get(timeout=WAIT) for _ in range(100)]
        finally:
            for _ in ackers:
                pending.put(None)  # type: ignore[arg-type]
        assert not errors
        assert sorted(got) == sorted(bodies * 25)

    def test_send_to_inbox_from_a_handler_works_and_logs_closed_inboxes(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # A handler runs on the I/O thread; replies do not wait for a confirm, so it
        # publishes them itself, and a return is reported later by the same thread.
        topic = names()
        server = make_rabbit()
        outcomes: queue.Queue[str] = queue.Queue()

        def reply(incoming: Incoming) -> None:
            incoming.ack()
            server.send_to_inbox(incoming.body.decode(), b"pong")
            outcomes.put("sent")

        server.listen(topic, reply)
        client = make_rabbit()
        replies = InboxCollector(WAIT)
        inbox = client.open_inbox(replies)
        client.send(topic, inbox.address.encode(), guarantee=Guarantee.AT_MOST_ONCE)
        assert (replies.get(), outcomes.get(timeout=WAIT)) == (b"pong", "sent")
        inbox.close()
        with caplog.at_level(logging.WARNING, logger="rpclib.transports.rabbit"):
            client.send(topic, inbox.address.encode(), guarantee=Guarantee.AT_MOST_ONCE)
            assert outcomes.get(timeout=WAIT) == "sent"
            wait_until(lambda: server.returned_replies == 1, "the returned reply")
        assert f"reply to {inbox.address} returned: NO_ROUTE" in caplog.text

    def test_reply_to_a_deleted_inbox_is_logged_and_the_server_keeps_serving(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        topic = names()
        server = make_rabbit()
        pending: queue.Queue[Incoming] = queue.Queue()
        server.listen(topic, pending.put)
        client = make_rabbit()
        gone = client.open_inbox(InboxCollector(WAIT))
        gone.close()  # deletes its reply queue
        with caplog.at_level(logging.WARNING, logger="rpclib.transports.rabbit"):
            server.send_to_inbox(gone.address, b"too late")  # returns: nobody waits
            wait_until(lambda: server.returned_replies == 1, "the returned reply")
        assert any(
            record.levelno == logging.WARNING
            and f"reply to {gone.address} returned: NO_ROUTE" in record.getMessage()
            and "the caller is gone" in record.getMessage()
            for record in caplog.records
        )
        # The server goes on: requests still arrive and replies still reach live inboxes.
        replies = InboxCollector(WAIT)
        live = client.open_inbox(replies)
        for word in (b"a", b"b"):
            client.send(topic, word, guarantee=Guarantee.AT_MOST_ONCE)
            incoming = pending.get(timeout=WAIT)
            incoming.ack()
            server.send_to_inbox(live.address, b"re: " + incoming.body)
            assert replies.get() == b"re: " + word
        assert server.returned_replies == 1

    def test_unconfirmed_replies_leave_no_pending_entries(
        self, make_rabbit: Callable[..., RabbitDriver]
    ) -> None:
        server, client = make_rabbit(), make_rabbit()
        replies = InboxCollector(WAIT)
        inbox = client.open_inbox(replies)
        for i in range(200):
            server.send_to_inbox(inbox.address, b"%d" % i)
        assert sorted(int(replies.get()) for _ in range(200)) == list(range(200))
        publisher = server._session.publisher
        wait_until(lambda: not publisher._pending and not publisher._by_id, "empty tables")

    def test_deliveries_decoded_by_the_driver_survive_nested_py_amqp_reads(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The I/O loop decodes basic.deliver itself; declarations (py-amqp waiting for
        # declare-ok by reading) run between its passes and must never meet half a
        # delivery: multi-frame bodies streamed while another thread keeps declaring.
        # Exact-size reads leave the buffer empty at every frame boundary, where a
        # loop that stopped mid-delivery would hand the rest to py-amqp.
        monkeypatch.setattr("rpclib.transports.rabbit.connection._RECV_CHUNK", 1)
        driver = make_rabbit()
        topic = names()
        received: queue.Queue[bytes] = queue.Queue()

        def take(incoming: Incoming) -> None:
            received.put(incoming.body)
            incoming.ack()

        driver.listen(topic, take, prefetch=8)
        generation = driver._session.generation
        bodies = [bytes([n]) * (150_000 + 1000 * n) for n in range(5)] + [b"", b"small"]
        stop = threading.Event()
        declared: list[int] = []
        errors: list[BaseException] = []

        def declare_meanwhile() -> None:
            try:
                while not stop.is_set():
                    driver.declare(names())
                    declared.append(1)
            except BaseException as exc:
                errors.append(exc)

        declarer = threading.Thread(target=declare_meanwhile)
        declarer.start()
        sender = make_rabbit()
        try:
            for _ in range(8):
                for body in bodies:
                    sender.send(topic, body, guarantee=Guarantee.AT_MOST_ONCE)
            got = [received.get(timeout=WAIT) for _ in range(8 * len(bodies))]
        finally:
            stop.set()
            declarer.join(WAIT)
        assert not errors and declared
        assert sorted(got) == sorted(bodies * 8)
        assert driver._session.generation == generation  # the connection was never lost

    def test_send_to_a_foreign_address_is_refused(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        driver = make_rabbit()
        driver.declare(topic)
        with pytest.raises(Undeliverable, match="not a rabbit"):
            driver.send_to_inbox(naming.queue_name(topic), b"x")


def test_driver_decodes_deliveries_as_py_amqp_does() -> None:
    from amqp.serialization import dumps

    from rpclib.transports.rabbit.connection import Delivery, is_deliver, parse_deliver

    args = dumps("sLbss", ["amq.ctag-é1", 2**40 + 7, True, "rpclib", "t@s.live"])
    method = struct.pack(">HH", 60, 60) + args
    assert is_deliver(method)
    assert parse_deliver(method) == {
        "consumer_tag": "amq.ctag-é1",
        "delivery_tag": 2**40 + 7,
        "redelivered": True,
        "exchange": "rpclib",
        "routing_key": "t@s.live",
    }
    cases: list[dict[str, Any]] = [
        {},
        {"message_id": "abc.1.2"},
        {
            "message_id": "m",
            "application_headers": {"x-rpclib-attempts": 3, "k": "v", "d": 1.5},
            "reply_to": "rpclib.reply.h.1.2",
            "delivery_mode": 2,
            "expiration": "1000",
        },
    ]
    for properties in cases:
        expected = amqp.Message(b"", **properties)
        header = struct.pack(">HHQ", 60, 0, 11) + expected._serialize_properties()
        reference = amqp.Message()
        reference.inbound_header(header)
        delivery = Delivery(1, {})
        assert delivery.on_header(header) is False
        assert delivery.properties == reference.properties
        assert delivery.on_body(b"hello ") is False
        assert delivery.on_body(b"world") is True
        assert delivery.body == b"hello world"
    empty = Delivery(1, {})
    assert empty.on_header(struct.pack(">HHQH", 60, 0, 0, 0)) is True
    assert empty.body == b"" and empty.properties == {}


# --- settlement --------------------------------------------------------------------------------


def deliver_one(
    make_rabbit: Callable[..., RabbitDriver], topic: Address, query: str = ""
) -> tuple[Collector, Incoming]:
    got = Collector(WAIT, ack=False)
    make_rabbit(query).listen(topic, got)
    make_rabbit(query).send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
    return got, got.get()


class TestSettlement:
    @pytest.mark.parametrize("first", ["ack", "requeue", "dead_letter"])
    def test_settling_twice_raises(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory, first: str
    ) -> None:
        _, incoming = deliver_one(make_rabbit, names())
        settle(incoming, first)
        for second in ("ack", "requeue", "dead_letter"):
            with pytest.raises(RuntimeError, match="already settled"):
                settle(incoming, second)

    def test_concurrent_settlement_succeeds_exactly_once(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        got, incoming = deliver_one(make_rabbit, names())
        start = threading.Barrier(8)
        outcomes: queue.Queue[str] = queue.Queue()

        def race() -> None:
            start.wait()
            try:
                incoming.ack()
                outcomes.put("ok")
            except RuntimeError:
                outcomes.put("refused")

        threads = [threading.Thread(target=race) for _ in range(8)]
        for thread in threads:
            thread.start()
        results = sorted(outcomes.get(timeout=WAIT) for _ in threads)
        assert results == ["ok"] + ["refused"] * 7
        got.assert_nothing(QUIET)  # acked once: no redelivery, and the channel survived

    def test_every_requeue_counts_an_attempt(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        got, incoming = deliver_one(make_rabbit, names())
        seen = [incoming.attempts]
        for _ in range(3):
            incoming.requeue()
            incoming = got.get()
            seen.append(incoming.attempts)
        incoming.ack()
        assert seen == [1, 2, 3, 4]

    def test_quorum_queues_count_every_redelivery(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        # Classic queues only say "redelivered" (attempts 2 at most); quorum queues count.
        topic = names()
        sender = make_rabbit("queue_type=quorum")
        sender.declare(topic)
        sender.send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        seen = []
        for _ in range(3):
            got = Collector(WAIT, ack=False)
            sub = make_rabbit("queue_type=quorum").listen(topic, got)
            seen.append(got.get().attempts)
            sub.close()  # unsettled: redelivered
        assert seen == [1, 2, 3]

    def test_prefetch_bounds_unsettled_messages_per_queue(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        make_rabbit().listen(topic, got, prefetch=1)
        sender = make_rabbit()
        for guarantee in (Guarantee.AT_LEAST_ONCE, Guarantee.AT_MOST_ONCE) * 2:
            sender.send(topic, guarantee.value.encode(), guarantee=guarantee)
        held = got.get_many(2)  # one from each queue (global QoS is deprecated in RabbitMQ 4)
        assert sorted(incoming.body for incoming in held) == [b"at-least-once", b"at-most-once"]
        got.assert_nothing(QUIET)
        for incoming in held:
            incoming.ack()
        for incoming in got.get_many(2):
            incoming.ack()

    def test_url_prefetch_overrides_the_listen_argument(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        make_rabbit("prefetch=1").listen(topic, got, prefetch=50)
        sender = make_rabbit()
        for i in range(3):
            sender.send(topic, b"%d" % i, guarantee=Guarantee.AT_LEAST_ONCE)
        first = got.get()
        got.assert_nothing(QUIET)
        first.ack()
        got.get().ack()

    def test_dead_letters_carry_reason_source_and_attempts_and_stay_queued(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
    ) -> None:
        topic = names()
        body = f"{names.prefix}-poison".encode()
        got, incoming = deliver_one(make_rabbit, topic)
        incoming.requeue()
        got.get().dead_letter("cannot parse")
        reader = make_rabbit()
        for _ in range(2):  # reading leaves them in the queue
            ours = [d for d in reader.dead_letters(10_000) if d.body in (b"m", body)]
            ours = [d for d in ours if d.address == naming.queue_name(topic)]
            assert [(d.reason, d.attempts) for d in ours] == [("cannot parse", 2)]
        assert queue_properties(rabbit_vhost)[naming.DEAD_LETTER_QUEUE]["durable"] == "true"


# --- recovery ------------------------------------------------------------------------------


class TestRecovery:
    def test_subscription_resumes_and_unsettled_messages_are_redelivered(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        make_rabbit().listen(topic, got)
        sender = make_rabbit()
        sender.send(topic, b"in flight", guarantee=Guarantee.AT_LEAST_ONCE)
        assert got.get().attempts == 1  # left unsettled
        drop_connections(rabbit_vhost)
        again = got.get()
        assert (again.body, again.attempts) == (b"in flight", 2)
        again.ack()
        sender.send(topic, b"after", guarantee=Guarantee.AT_LEAST_ONCE)
        sender.send(topic, b"after, at most once", guarantee=Guarantee.AT_MOST_ONCE)
        later = got.get_many(2)
        assert sorted(m.body for m in later) == [b"after", b"after, at most once"]

    def test_inbox_whose_queue_survived_reports_disconnected_then_reconnected(
        self, make_rabbit: Callable[..., RabbitDriver], rabbit_vhost: str
    ) -> None:
        events: EventCollector[str] = EventCollector(WAIT)
        replies = InboxCollector(WAIT)
        inbox = make_rabbit().open_inbox(replies, events.put)
        drop_connections(rabbit_vhost)
        assert [events.get(), events.get()] == ["disconnected", "reconnected"]
        make_rabbit().send_to_inbox(inbox.address, b"still here")
        assert replies.get() == b"still here"

    def test_settling_a_message_of_a_dead_connection_is_ignored(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="rpclib.transports.rabbit")
        topic = names()
        got, stale = deliver_one(make_rabbit, topic)
        drop_connections(rabbit_vhost)
        redelivered = got.get()
        stale.ack()  # from the old connection: ignored, no error
        assert "ignored" in caplog.text
        assert (redelivered.body, redelivered.attempts) == (b"m", 2)
        redelivered.ack()
        got.assert_nothing(QUIET)

    def test_adverts_are_published_again_after_reconnect(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
    ) -> None:
        topic = names()
        publisher = make_rabbit()
        publisher.advertise(names.server(topic, "s1"), b"v1", ttl=60)
        seen = AdvertCollector(WAIT)
        make_rabbit().watch_adverts(topic.exchange, topic.topic, seen)
        assert seen.next_for("s1") == b"v1"
        drop_connections(rabbit_vhost)
        assert seen.next_for("s1") == b"v1"  # re-advertised, or answered to the re-sync
        late = AdvertCollector(WAIT)
        make_rabbit().watch_adverts(topic.exchange, topic.topic, late)
        assert late.get_nowait() == ("s1", b"v1")

    def test_rpc_call_after_connection_loss_succeeds(
        self, rabbit_url: str, names: AddressFactory, rabbit_vhost: str
    ) -> None:
        class Echo:
            def echo(self, ctx: dict[str, Any], word: str) -> str:
                return word

        target = rpclib.Target(topic=names().topic, exchange=names.exchange, server="s1")
        with (
            rpclib.Transport(RabbitDriver(parse_url(rabbit_url))) as server_side,
            rpclib.Transport(RabbitDriver(parse_url(rabbit_url))) as client_side,
        ):
            server = rpclib.RPCServer(server_side, target, [Echo()])
            server.start()
            try:
                client = rpclib.RPCClient(client_side, target, timeout=WAIT)
                assert client.call({}, "echo", word="before") == "before"
                drop_connections(rabbit_vhost)
                # Until the server's driver is back, a call is rightly Undeliverable:
                # nobody listens (its auto-delete .live queue went with its connection).
                live = naming.queue_name(
                    Address(names.exchange, target.topic or "", "s1"), live=True
                )
                wait_until(
                    lambda: queue_properties(rabbit_vhost).get(live, {}).get("consumers") == "1",
                    "the server to consume again",
                )
                assert client.call({}, "echo", word="after") == "after"
            finally:
                server.stop()
                server.wait()

    def test_deleted_reply_queue_is_declared_again_and_calls_still_work(
        self, rabbit_url: str, names: AddressFactory, rabbit_vhost: str
    ) -> None:
        class Echo:
            def echo(self, ctx: dict[str, Any], word: str) -> str:
                return word

        target = rpclib.Target(topic=names().topic, exchange=names.exchange)
        with (
            rpclib.Transport(RabbitDriver(parse_url(rabbit_url))) as server_side,
            rpclib.Transport(RabbitDriver(parse_url(rabbit_url))) as client_side,
        ):
            server = rpclib.RPCServer(server_side, target(server="s1"), [Echo()])
            server.start()
            try:
                client = rpclib.RPCClient(client_side, target, timeout=WAIT)
                assert client.call({}, "echo", word="before") == "before"
                reply_queue = client_side.replies.address
                rabbitmqctl("delete_queue", "-p", rabbit_vhost, reply_queue)
                wait_until(
                    lambda: reply_queue in list_queues(rabbit_vhost),
                    "the reply queue to be declared again",
                )
                assert client.call({}, "echo", word="after") == "after"
            finally:
                server.stop()
                server.wait()

    def test_deleted_inbox_queue_reports_lost(
        self, make_rabbit: Callable[..., RabbitDriver], rabbit_vhost: str
    ) -> None:
        events: EventCollector[str] = EventCollector(WAIT)
        inbox = make_rabbit().open_inbox(InboxCollector(WAIT), events.put)
        rabbitmqctl("delete_queue", "-p", rabbit_vhost, inbox.address)
        assert events.get() == "lost"

    def test_deleted_durable_queue_is_declared_again(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
    ) -> None:
        topic = names()
        got = Collector(WAIT)
        make_rabbit().listen(topic, got)
        rabbitmqctl("delete_queue", "-p", rabbit_vhost, naming.queue_name(topic))
        wait_until(
            lambda: (
                queue_properties(rabbit_vhost).get(naming.queue_name(topic), {}).get("consumers")
                == "1"
            ),
            "the durable queue to be declared and consumed again",
        )
        make_rabbit().send(topic, b"kept", guarantee=Guarantee.AT_LEAST_ONCE)
        assert got.get().body == b"kept"

    def test_broker_closing_the_publish_channel_is_repaired_without_reconnecting(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_url: str,
    ) -> None:
        topic = names()
        driver = make_rabbit()
        reports: EventCollector[Undeliverable] = EventCollector(WAIT)
        driver.send(topic, b"x", guarantee=Guarantee.AT_MOST_ONCE, on_undeliverable=reports.put)
        reports.get()  # nobody listens: returned
        generation = driver._session.generation
        delete_exchange(driver, topic.exchange)
        # Publishing to the deleted exchange makes the broker close the publish channel.
        driver.send(topic, b"x", guarantee=Guarantee.AT_MOST_ONCE, on_undeliverable=reports.put)
        got = Collector(WAIT)
        wait_until(
            lambda: (
                driver._session.publisher.channel is not None
                and driver._session.publisher.channel.is_open
                and topic.exchange not in driver._session.exchanges
            ),
            "the publish channel to be replaced",
        )
        driver.listen(topic, got)  # declares the exchange again
        driver.send(topic, b"after", guarantee=Guarantee.AT_MOST_ONCE, on_undeliverable=reports.put)
        assert got.get().body == b"after"
        assert driver._session.generation == generation

    def test_idle_connections_are_kept_alive_by_heartbeats(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
    ) -> None:
        topic = names()
        driver = make_rabbit("heartbeat=1")
        driver.declare(topic)
        driver.send(topic, b"opens a pooled connection", guarantee=Guarantee.AT_LEAST_ONCE)
        assert connection_count(rabbit_vhost) == 2  # consumer + one publisher
        generation = driver._session.generation
        time.sleep(3.5)  # pacing: > 2 heartbeat intervals of idleness; the broker would drop us
        assert connection_count(rabbit_vhost) == 2
        assert driver._session.generation == generation  # never reconnected
        driver.send(topic, b"still fine", guarantee=Guarantee.AT_LEAST_ONCE)


# --- lifecycle -------------------------------------------------------------------------------


class TestPipelinedSends:
    """``send_pipelined``: its own connection, a bounded window, resent after a drop."""

    def test_a_window_of_four_still_carries_every_message(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT)
        make_rabbit().listen(topic, got, prefetch=500)
        sender = make_rabbit("confirm_window=4")
        outcomes: EventCollector[BaseException | None] = EventCollector(WAIT)
        for i in range(200):
            sender.send_pipelined(topic, b"%d" % i, on_outcome=outcomes.put)
        assert sorted(int(m.body) for m in got.get_many(200)) == list(range(200))
        assert [outcomes.get() for _ in range(200)] == [None] * 200

    def test_pipelined_sends_use_a_connection_of_their_own(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory, rabbit_vhost: str
    ) -> None:
        topic = names()
        make_rabbit().declare(topic)
        sender = make_rabbit()
        before = connection_count(rabbit_vhost)
        outcomes: EventCollector[BaseException | None] = EventCollector(WAIT)
        sender.send_pipelined(topic, b"x", on_outcome=outcomes.put)
        assert outcomes.get() is None
        assert connection_count(rabbit_vhost) == before + 1

    def test_unconfirmed_messages_are_sent_again_after_the_connection_drops(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory, rabbit_vhost: str
    ) -> None:
        topic = names()
        got = Collector(WAIT)
        make_rabbit().listen(topic, got, prefetch=1000)
        sender = make_rabbit()
        outcomes: EventCollector[BaseException | None] = EventCollector(WAIT * 2)
        stop = threading.Event()
        sent = 0

        def stream() -> None:
            nonlocal sent
            while not stop.is_set() and sent < 20000:
                sender.send_pipelined(topic, b"%d" % sent, on_outcome=outcomes.put)
                sent += 1

        thread = threading.Thread(target=stream)
        thread.start()
        wait_until(lambda: sent >= 500, "the stream to start")
        drop_connections(rabbit_vhost)
        stop.set()
        thread.join(WAIT)
        assert [outcomes.get() for _ in range(sent)] == [None] * sent
        bodies = set()
        while len(bodies) < sent:
            bodies.add(int(got.get().body))
        assert bodies == set(range(sent))

    def test_pipelined_client_casts_are_flushed_when_the_transport_closes(
        self, rabbit_url: str, names: AddressFactory
    ) -> None:
        class Count:
            def __init__(self) -> None:
                self.seen: set[int] = set()

            def note(self, ctx: dict[str, Any], n: int) -> None:
                self.seen.add(n)

        target = rpclib.Target(topic=names().topic, exchange=names.exchange)
        count = Count()
        with rpclib.Transport(RabbitDriver(parse_url(rabbit_url))) as server_side:
            server = rpclib.RPCServer(server_side, target(server="s1"), [count])
            server.start()
            try:
                client_side = rpclib.Transport(RabbitDriver(parse_url(rabbit_url)))
                client = rpclib.RPCClient(client_side, target, at_least_once=True, pipelined=True)
                for n in range(500):
                    client.cast({}, "note", n=n)
                client_side.close()  # flushes: every cast confirmed before the driver closes
                assert client_side.pipeline.in_flight == 0
                wait_until(lambda: count.seen == set(range(500)), "every cast handled")
            finally:
                server.stop()
                server.wait()

    def test_a_pipelined_cast_nobody_can_take_is_reported_to_the_client(
        self, rabbit_url: str, names: AddressFactory
    ) -> None:
        failures: queue.Queue[rpclib.CastFailure] = queue.Queue()
        target = rpclib.Target(topic=names().topic, exchange=names.exchange)
        with rpclib.Transport(RabbitDriver(parse_url(rabbit_url))) as transport:
            client = rpclib.RPCClient(
                transport, target, at_least_once=True, pipelined=True, on_cast_error=failures.put
            )
            client.cast({}, "note", n=1)
            failure = failures.get(timeout=WAIT)
            assert (failure.method, type(failure.error)) == ("note", Undeliverable)
            with pytest.raises(TransportError, match="1 pipelined cast"):
                client.flush(timeout=WAIT)


class TestLifecycle:
    def test_closing_drivers_leaves_only_durable_queues(
        self,
        make_rabbit: Callable[..., RabbitDriver],
        names: AddressFactory,
        rabbit_vhost: str,
    ) -> None:
        topic = names()
        drivers = [make_rabbit(), make_rabbit()]
        for driver in drivers:
            driver.listen(topic, Collector(WAIT))
            driver.listen(names.server(topic), Collector(WAIT))
            driver.listen(fanout(topic), Collector(WAIT))
            driver.open_inbox(InboxCollector(WAIT))
            driver.advertise(names.server(topic, "s1"), b"ad", ttl=60)
            driver.watch_adverts(topic.exchange, topic.topic, AdvertCollector(WAIT))
        assert any(p["durable"] == "false" for p in queue_properties(rabbit_vhost).values())
        for driver in drivers:
            driver.close()
        wait_until(
            lambda: all(p["durable"] == "true" for p in queue_properties(rabbit_vhost).values()),
            "only durable queues to remain",
        )
        wait_until(lambda: connection_count(rabbit_vhost) == 0, "all connections to close")

    def test_close_from_a_handler_stops_the_driver(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        driver = make_rabbit()
        done = threading.Event()

        def close_driver(incoming: Incoming) -> None:
            driver.close()
            done.set()

        driver.listen(topic, close_driver)
        make_rabbit().send(topic, b"stop", guarantee=Guarantee.AT_LEAST_ONCE)
        assert done.wait(WAIT)
        with pytest.raises(TransportError):
            driver.send(topic, b"x", guarantee=Guarantee.AT_LEAST_ONCE)
        again = Collector(WAIT)
        make_rabbit().listen(topic, again)
        assert again.get().attempts == 2  # never settled: redelivered

    def test_close_stops_the_driver_threads(
        self, make_rabbit: Callable[..., RabbitDriver], names: AddressFactory
    ) -> None:
        topic = names()
        driver = make_rabbit()
        driver.listen(topic, Collector(WAIT))
        driver.send(topic, b"opens a publisher", guarantee=Guarantee.AT_LEAST_ONCE)
        label = driver._session._label

        def ours() -> list[threading.Thread]:
            return [t for t in threading.enumerate() if t.name.endswith(label) and t.is_alive()]

        assert len(ours()) == 2  # the I/O thread and the publishers' heartbeat thread
        driver.close()
        wait_until(lambda: not ours(), "the driver's threads to exit")

    def test_unreachable_broker_fails_at_construction(self) -> None:
        with pytest.raises(TransportError, match="cannot connect"):
            RabbitDriver(parse_url("rabbit://127.0.0.1:1/?connect_timeout=1"))

    def test_failover_skips_a_dead_host(self, rabbit_url: str, rabbit_vhost: str) -> None:
        real = rabbit_url.removeprefix("rabbit://").partition("/")[0]
        driver = RabbitDriver(parse_url(f"rabbit://guest:guest@127.0.0.1:1,{real}/{rabbit_vhost}"))
        try:
            driver.declare(Address("failover", "t"))
        finally:
            driver.close()

    def test_import_rpclib_does_not_import_amqp_or_kombu(self) -> None:
        code = "import rpclib, sys; print(sorted({'amqp', 'kombu'} & set(sys.modules)))"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]"

    def test_rabbit_schemes_load_the_rabbit_driver(self) -> None:
        from rpclib.transports import driver_class

        assert driver_class("rabbit") is RabbitDriver
        assert driver_class("rabbits") is RabbitDriver


# --- URL options ---------------------------------------------------------------------------


class TestUrlOptions:
    def test_defaults(self) -> None:
        options = parse_options(parse_url("rabbit://h"))
        assert [(h.address, h.userid, h.password) for h in options.hosts] == [
            ("h:5672", "guest", "guest")
        ]
        assert (options.virtual_host, options.heartbeat, options.tls) == ("/", 15, None)
        assert (options.queue_type, options.prefetch) == ("classic", None)
        assert (options.connect_timeout, options.send_timeout) == (5.0, 15.0)
        assert (options.retry_backoff, options.retry_backoff_max) == (0.2, 5.0)
        assert options.advert_sync_wait == 0.3
        assert options.confirm_window == 1024

    @pytest.mark.parametrize(
        ("url", "queue_type"),
        [
            ("rabbit://h1", "classic"),
            ("rabbit://h1,h2,h3", "quorum"),
            ("rabbit://h1,h2?queue_type=classic", "classic"),
            ("rabbit://h1?queue_type=quorum", "quorum"),
        ],
    )
    def test_queue_type_auto_is_quorum_for_several_hosts(self, url: str, queue_type: str) -> None:
        assert parse_options(parse_url(url)).queue_type == queue_type

    def test_hosts_credentials_and_vhost(self) -> None:
        options = parse_options(
            parse_url("rabbit://u:p%40ss@h1:5673,h2,[::1]:5674/my%2Fvhost?heartbeat=0")
        )
        assert [(h.address, h.userid, h.password) for h in options.hosts] == [
            ("h1:5673", "u", "p@ss"),
            ("h2:5672", "guest", "guest"),
            ("[::1]:5674", "guest", "guest"),
        ]
        assert (options.virtual_host, options.heartbeat) == ("my/vhost", 0)

    def test_rabbits_means_tls_on_port_5671(self) -> None:
        options = parse_options(parse_url("rabbits://broker"))
        assert options.hosts[0].port == 5671
        assert isinstance(options.tls, ssl.SSLContext)
        assert options.tls.verify_mode is ssl.CERT_REQUIRED and options.tls.check_hostname

    def test_ssl_option_turns_tls_on_and_ssl_verify_false_skips_hostname_checks(self) -> None:
        options = parse_options(parse_url("rabbit://broker?ssl=true&ssl_verify=false"))
        assert options.tls is not None and options.hosts[0].port == 5671
        assert not options.tls.check_hostname
        assert options.tls.verify_mode is ssl.CERT_REQUIRED

    def test_tls_files_are_loaded(self, tmp_path: Path) -> None:
        cert, key = make_self_signed(tmp_path)
        options = parse_options(
            parse_url(f"rabbits://broker/?ssl_ca={cert}&ssl_cert={cert}&ssl_key={key}")
        )
        assert options.tls is not None
        assert options.tls.cert_store_stats()["x509_ca"] == 1

    @pytest.mark.parametrize(
        ("query", "named"),
        [
            ("bogus=1", "bogus"),
            ("heartbeat=-1", "heartbeat"),
            ("heartbeat=abc", "heartbeat"),
            ("queue_type=stream", "queue_type"),
            ("prefetch=0", "prefetch"),
            ("connect_timeout=0", "connect_timeout"),
            ("send_timeout=inf", "send_timeout"),
            ("retry_backoff=nan", "retry_backoff"),
            ("retry_backoff=2&retry_backoff_max=1", "retry_backoff_max"),
            ("advert_sync_wait=-1", "advert_sync_wait"),
            ("confirm_window=0", "confirm_window"),
            ("ssl=maybe", "ssl"),
            ("ssl_ca=/x.pem", "ssl_ca"),
            ("ssl=1&ssl_ca=/nonexistent.pem", "ssl_ca"),
            ("ssl=1&ssl_key=/k.pem", "ssl_key"),
            ("ssl=1&ssl_cert=/nonexistent.pem", "ssl_cert"),
            ("ssl=1&ssl_verify=perhaps", "ssl_verify"),
        ],
    )
    def test_bad_option_is_rejected_naming_it(self, query: str, named: str) -> None:
        with pytest.raises(InvalidTransportURL, match=named) as excinfo:
            RabbitDriver(parse_url(f"rabbit://user:secret@h/?{query}"))
        assert "secret" not in str(excinfo.value)

    def test_rabbits_with_ssl_false_is_a_contradiction(self) -> None:
        with pytest.raises(InvalidTransportURL, match="contradicts"):
            parse_options(parse_url("rabbits://h?ssl=false"))


def delete_exchange(driver: RabbitDriver, exchange: str) -> None:
    """Delete ``exchange`` behind the driver's back (as an operator would)."""
    options = driver.options
    host = options.hosts[0]
    conn = amqp.Connection(
        host.address, userid=host.userid, password=host.password,
        virtual_host=options.virtual_host,
    )  # fmt: skip
    conn.connect()
    try:
        conn.channel().exchange_delete(exchange)
    finally:
        conn.close()


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key (openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=broker", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def settle(incoming: Incoming, how: str) -> None:
    if how == "dead_letter":
        incoming.dead_letter("test")
    else:
        getattr(incoming, how)()
