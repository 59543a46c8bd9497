"""The driver contract as tests, reusable by every transport driver.

A driver's test module subclasses :class:`DriverContract` and provides one
fixture, ``make_driver``: a callable returning a new, connected driver on the
same bus or broker each time it is called (so one test can model several
processes), closing them all at teardown::

    class TestRabbitContract(DriverContract):
        supports_dead_letter_inspection = False

        @pytest.fixture
        def make_driver(self, rabbit_url):
            drivers = []
            def make():
                drivers.append(driver := load_driver(rabbit_url))
                return driver
            yield make
            for driver in drivers:
                driver.close()

``address_factory`` (an :class:`AddressFactory`) gives every test fresh
exchange, topic, server and group names so tests never collide on a shared
broker; override the fixture if a broker needs a particular naming scheme.

The tests use only the public contract of :mod:`rpclib.transports.base` and
assume delivery is asynchronous: they wait on queues with generous deadlines
(:attr:`DriverContract.wait`) and never assert on speed. Checks that
something did *not* happen watch for :attr:`DriverContract.quiet_period`,
which can only let a bug slip through, never fail a correct driver. They do
assume that a subscription is consuming once ``listen()`` returns.

Optional parts of the contract are switched by class attributes; a switched
off feature's tests are skipped with a reason, never silently passed.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Generic, TypeVar

import pytest

from rpclib.exceptions import TransportError, Undeliverable
from rpclib.transports.base import (
    Address,
    DeadLetter,
    Driver,
    Guarantee,
    Incoming,
    Subscription,
)
from tests.transports.envelope_contract import EnvelopeUpgradeContract

MakeDriver = Callable[[], Driver]


def ignore(*args: object) -> None:
    """A handler that drops what it gets."""


BOTH_GUARANTEES = pytest.mark.parametrize(
    "guarantee", [Guarantee.AT_MOST_ONCE, Guarantee.AT_LEAST_ONCE], ids=["at_most", "at_least"]
)


# --- helpers -------------------------------------------------------------------


@dataclass
class AddressFactory:
    """Unique names for one test: ``factory()`` is a fresh topic address."""

    exchange: str
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def __call__(self) -> Address:
        """A topic on a topic name nobody else uses."""
        return Address(self.exchange, self.unique("topic"))

    def unique(self, kind: str) -> str:
        """A fresh name for a server, group, ... (``kind`` only makes it readable)."""
        return f"{self.prefix}-{kind}{next(self._counter)}"

    def server(self, topic: Address, name: str | None = None) -> Address:
        """The address of server ``name`` (fresh if None) of ``topic``."""
        return replace(topic, server=name or self.unique("server"))


def fanout(topic: Address) -> Address:
    return replace(topic, fanout=True)


class Collector:
    """A message handler that records each delivery (and acks it first unless ``ack=False``)."""

    def __init__(self, wait: float, *, ack: bool = True) -> None:
        self.wait = wait
        self.ack = ack
        self._received: queue.Queue[Incoming] = queue.Queue()

    def __call__(self, incoming: Incoming) -> None:
        if self.ack:
            incoming.ack()
        self._received.put(incoming)

    def get(self) -> Incoming:
        """The next delivery; fails after ``wait`` seconds."""
        try:
            return self._received.get(timeout=self.wait)
        except queue.Empty:
            raise AssertionError(f"no message arrived within {self.wait}s") from None

    def get_many(self, count: int) -> list[Incoming]:
        return [self.get() for _ in range(count)]

    def assert_nothing(self, within: float) -> None:
        """Fail if a delivery arrives within ``within`` seconds."""
        try:
            incoming = self._received.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(
            f"unexpected delivery of {incoming.body[:60]!r} (attempts={incoming.attempts})"
        )


T = TypeVar("T")


class EventCollector(Generic[T]):
    """Records inbox bodies or advert events from a driver thread."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._received: queue.Queue[T] = queue.Queue()

    def put(self, item: T) -> None:
        self._received.put(item)

    def get(self) -> T:
        try:
            return self._received.get(timeout=self.wait)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {self.wait}s") from None

    def get_nowait(self) -> T:
        try:
            return self._received.get_nowait()
        except queue.Empty:
            raise AssertionError("expected an event to have been reported already") from None

    def assert_nothing(self, within: float) -> None:
        try:
            item = self._received.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event {item!r}")


class AdvertCollector(EventCollector[tuple[str, bytes | None]]):
    def __call__(self, server: str, body: bytes | None) -> None:
        self.put((server, body))

    def next_for(self, server: str) -> bytes | None:
        """The next event of ``server``, skipping other servers' events."""
        deadline = time.monotonic() + self.wait
        while True:
            try:
                got, body = self._received.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no advert event for {server} within {self.wait}s") from None
            if got == server:
                return body


class InboxCollector(EventCollector[bytes]):
    def __call__(self, body: bytes) -> None:
        self.put(body)


# --- the contract ------------------------------------------------------------------


class DriverContract(EnvelopeUpgradeContract):
    """Contract tests; subclass and provide the ``make_driver`` fixture.

    The RPC layer's own cross-transport behaviour (envelope upgrades) comes
    with it from :mod:`tests.transports.envelope_contract`.
    """

    wait: ClassVar[float] = 10.0
    """Deadline for anything that should happen."""
    quiet_period: ClassVar[float] = 0.3
    """How long to watch for something that should not happen."""
    supports_dead_letter_inspection: ClassVar[bool] = True
    """``Driver.dead_letters()`` is implemented."""
    supports_advert_expiry: ClassVar[bool] = True
    """The driver expires adverts by TTL itself (optional: rpclib also does)."""
    advert_expiry_ttl: ClassVar[float] = 0.5
    """TTL for the expiry test; raise it for brokers with coarse leases."""
    supports_closed_inbox_detection: ClassVar[bool] = True
    """``send_to_inbox`` raises Undeliverable for a closed inbox (the contract says "when
    detectable")."""
    dead_letter_scan_limit: ClassVar[int] = 10_000
    """How many dead letters to read when looking for the test's own."""

    @pytest.fixture
    def address_factory(self) -> AddressFactory:
        return AddressFactory(exchange=f"contract-{uuid.uuid4().hex[:8]}")

    def collector(self, *, ack: bool = True) -> Collector:
        return Collector(self.wait, ack=ack)

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        """Poll ``predicate`` for up to ``wait`` seconds; fail naming ``what``."""
        deadline = time.monotonic() + self.wait
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {self.wait}s waiting for {what}")
            time.sleep(0.05)

    def assert_all_quiet(self, *collectors: Collector) -> None:
        """Fail if any collector gets a delivery within one quiet period."""
        collectors[0].assert_nothing(self.quiet_period)
        for collector in collectors[1:]:
            collector.assert_nothing(0)

    # --- routing -------------------------------------------------------------

    @BOTH_GUARANTEES
    def test_topic_message_reaches_exactly_one_of_two_competing_consumers(
        self, make_driver: MakeDriver, address_factory: AddressFactory, guarantee: Guarantee
    ) -> None:
        topic = address_factory()
        got = self.collector()
        make_driver().listen(topic, got)
        make_driver().listen(topic, got)
        make_driver().send(topic, b"one", guarantee=guarantee)
        assert got.get().body == b"one"
        got.assert_nothing(self.quiet_period)

    @BOTH_GUARANTEES
    def test_each_group_gets_a_copy(
        self, make_driver: MakeDriver, address_factory: AddressFactory, guarantee: Guarantee
    ) -> None:
        topic = address_factory()
        pool, audit, rpc = self.collector(), self.collector(), self.collector()
        pool_group, audit_group = address_factory.unique("group"), address_factory.unique("group")
        make_driver().listen(topic, pool, group=pool_group)
        make_driver().listen(topic, pool, group=pool_group)
        make_driver().listen(topic, audit, group=audit_group)
        make_driver().listen(topic, rpc)  # group=None is a group of its own
        make_driver().send(topic, b"note", guarantee=guarantee)
        for got in (pool, audit, rpc):
            assert got.get().body == b"note"
        self.assert_all_quiet(pool, audit, rpc)

    @BOTH_GUARANTEES
    def test_server_directed_message_reaches_only_that_server(
        self, make_driver: MakeDriver, address_factory: AddressFactory, guarantee: Guarantee
    ) -> None:
        topic = address_factory()
        one, two = address_factory.server(topic), address_factory.server(topic)
        at_one, at_two, at_topic = self.collector(), self.collector(), self.collector()
        receiver = make_driver()
        receiver.listen(one, at_one)
        make_driver().listen(two, at_two)
        receiver.listen(topic, at_topic)
        make_driver().send(one, b"for one", guarantee=guarantee)
        assert at_one.get().body == b"for one"
        self.assert_all_quiet(at_one, at_two, at_topic)

    @BOTH_GUARANTEES
    def test_fanout_reaches_every_listener_once(
        self, make_driver: MakeDriver, address_factory: AddressFactory, guarantee: Guarantee
    ) -> None:
        topic = address_factory()
        first, second = make_driver(), make_driver()
        listeners = [self.collector() for _ in range(3)]
        first.listen(fanout(topic), listeners[0])
        first.listen(fanout(topic), listeners[1])
        second.listen(fanout(topic), listeners[2])
        at_topic, at_server = self.collector(), self.collector()
        second.listen(topic, at_topic)
        second.listen(address_factory.server(topic), at_server)
        make_driver().send(fanout(topic), b"all", guarantee=guarantee)
        for got in listeners:
            assert got.get().body == b"all"
        self.assert_all_quiet(*listeners, at_topic, at_server)

    # --- undeliverable -------------------------------------------------------------

    def test_at_most_once_without_listener_is_undeliverable(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        sender = make_driver()
        topic = address_factory()
        for address in (topic, address_factory.server(topic), fanout(topic)):
            with pytest.raises(Undeliverable) as excinfo:
                sender.send(address, b"x", guarantee=Guarantee.AT_MOST_ONCE)
            assert topic.topic in str(excinfo.value)

    def test_at_most_once_after_consumers_left_is_undeliverable(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        server = address_factory.server(topic)
        receiver = make_driver()
        subs = [receiver.listen(address, self.collector()) for address in (topic, server)]
        for sub in subs:
            sub.close()
        sender = make_driver()
        for address in (topic, server):
            with pytest.raises(Undeliverable):
                sender.send(address, b"x", guarantee=Guarantee.AT_MOST_ONCE)

    def test_at_least_once_to_undeclared_address_is_undeliverable(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        sender = make_driver()
        topic = address_factory()
        for address in (topic, address_factory.server(topic)):
            with pytest.raises(Undeliverable) as excinfo:
                sender.send(address, b"x", guarantee=Guarantee.AT_LEAST_ONCE)
            assert topic.topic in str(excinfo.value)

    def test_fanout_without_listener_is_undeliverable_at_least_once(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        with pytest.raises(Undeliverable):
            make_driver().send(fanout(address_factory()), b"x", guarantee=Guarantee.AT_LEAST_ONCE)

    # --- pipelined sends ----------------------------------------------------------------

    def test_pipelined_send_is_delivered_and_reported_stored(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector()
        make_driver().listen(topic, got)
        outcomes: EventCollector[BaseException | None] = EventCollector(self.wait)
        make_driver().send_pipelined(topic, b"piped", on_outcome=outcomes.put)
        assert got.get().body == b"piped"
        assert outcomes.get() is None
        outcomes.assert_nothing(self.quiet_period)  # exactly once

    def test_pipelined_send_to_undeclared_address_fails_by_raising_or_by_outcome(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        outcomes: EventCollector[BaseException | None] = EventCollector(self.wait)
        try:
            make_driver().send_pipelined(address_factory(), b"x", on_outcome=outcomes.put)
        except Undeliverable:
            outcomes.assert_nothing(self.quiet_period)  # raised: no outcome as well
            return
        assert isinstance(outcomes.get(), Undeliverable)

    def test_many_pipelined_sends_all_arrive_and_are_each_reported_once(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector()
        make_driver().listen(topic, got, prefetch=500)
        sender = make_driver()
        outcomes: EventCollector[BaseException | None] = EventCollector(self.wait)
        for i in range(300):
            sender.send_pipelined(topic, b"%d" % i, on_outcome=outcomes.put)
        assert sorted(int(m.body) for m in got.get_many(300)) == list(range(300))
        assert [outcomes.get() for _ in range(300)] == [None] * 300
        outcomes.assert_nothing(self.quiet_period)

    # --- durability -------------------------------------------------------------------

    def test_at_least_once_kept_while_consumer_away(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        server = address_factory.server(topic)
        for address in (topic, server):
            make_driver().listen(address, self.collector()).close()
            make_driver().send(address, b"while away", guarantee=Guarantee.AT_LEAST_ONCE)
            got = self.collector()
            make_driver().listen(address, got)
            incoming = got.get()
            assert (incoming.body, incoming.attempts) == (b"while away", 1)
            got.assert_nothing(self.quiet_period)

    def test_declare_keeps_at_least_once_messages_for_a_group_not_started(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        group = address_factory.unique("billing")
        server = address_factory.server(topic)
        sender = make_driver()
        sender.declare(topic, group)
        sender.declare(server)
        sender.send(topic, b"bill me", guarantee=Guarantee.AT_LEAST_ONCE)
        sender.send(server, b"direct", guarantee=Guarantee.AT_LEAST_ONCE)
        billing, direct = self.collector(), self.collector()
        make_driver().listen(topic, billing, group=group)
        make_driver().listen(server, direct)
        assert billing.get().body == b"bill me"
        assert direct.get().body == b"direct"

    # --- settlement -------------------------------------------------------------------

    def test_unacked_message_redelivered_to_another_consumer_after_close(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        first = self.collector(ack=False)
        sub = make_driver().listen(topic, first)
        make_driver().send(topic, b"retry me", guarantee=Guarantee.AT_LEAST_ONCE)
        assert first.get().attempts == 1
        second = self.collector()
        make_driver().listen(topic, second)
        sub.close()
        incoming = second.get()
        assert (incoming.body, incoming.attempts) == (b"retry me", 2)
        second.assert_nothing(self.quiet_period)

    def test_requeue_redelivers(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector(ack=False)
        make_driver().listen(topic, got)
        make_driver().send(topic, b"again", guarantee=Guarantee.AT_LEAST_ONCE)
        first = got.get()
        assert first.attempts == 1
        first.requeue()
        second = got.get()
        assert (second.body, second.attempts) == (b"again", 2)
        second.ack()
        got.assert_nothing(self.quiet_period)

    def test_handler_exception_redelivers_with_an_attempt_more(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector()

        def crash_first(incoming: Incoming) -> None:
            if incoming.attempts == 1:
                raise ValueError("consumer bug")
            got(incoming)

        make_driver().listen(topic, crash_first)
        make_driver().send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        incoming = got.get()
        assert (incoming.body, incoming.attempts) == (b"m", 2)

    def test_dead_letter_is_not_redelivered(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector(ack=False)
        make_driver().listen(topic, got)
        sender = make_driver()
        sender.send(topic, b"poison", guarantee=Guarantee.AT_LEAST_ONCE)
        got.get().dead_letter("cannot parse")
        sender.send(topic, b"next", guarantee=Guarantee.AT_LEAST_ONCE)
        follow_up = got.get()
        assert follow_up.body == b"next"
        follow_up.ack()
        got.assert_nothing(self.quiet_period)

    def test_dead_letter_records_reason(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        if not self.supports_dead_letter_inspection:
            pytest.skip("driver does not expose dead letters (supports_dead_letter_inspection)")
        topic = address_factory()
        got = self.collector(ack=False)
        consumer = make_driver()
        consumer.listen(topic, got)
        sender = make_driver()
        bodies = [f"{address_factory.prefix}-dead-{i}".encode() for i in range(2)]
        for i, body in enumerate(bodies):
            sender.send(topic, body, guarantee=Guarantee.AT_LEAST_ONCE)
            incoming = got.get()
            if i == 1:  # the second one is dead-lettered on its second attempt
                incoming.requeue()
                incoming = got.get()
            incoming.dead_letter(f"reason {i}")
        reader = make_driver()
        ours: list[DeadLetter] = []

        def found_both() -> bool:
            scan = reader.dead_letters(self.dead_letter_scan_limit)
            ours[:] = [d for d in scan if d.body in bodies]
            return len(ours) == 2

        # dead_letter() may return before the copy is stored (it must not wait for the broker)
        self.wait_for(found_both, "both dead letters")
        assert [(d.body, d.reason, d.attempts) for d in ours] == [
            (bodies[0], "reason 0", 1),
            (bodies[1], "reason 1", 2),
        ]
        assert all(topic.topic in d.address for d in ours)

    def test_dead_lettering_at_most_once_messages_settles_them_for_good(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector(ack=False)
        make_driver().listen(topic, got)
        sender = make_driver()
        for i in range(20):
            sender.send(topic, b"garbage %d" % i, guarantee=Guarantee.AT_MOST_ONCE)
            got.get().dead_letter("garbage")
        sender.send(topic, b"next", guarantee=Guarantee.AT_MOST_ONCE)
        assert got.get().body == b"next"
        got.assert_nothing(self.quiet_period)

    def test_prefetch_bounds_unsettled_messages(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector(ack=False)
        make_driver().listen(topic, got, prefetch=2)
        sender = make_driver()
        for i in range(5):
            sender.send(topic, b"%d" % i, guarantee=Guarantee.AT_LEAST_ONCE)
        held = got.get_many(2)
        got.assert_nothing(self.quiet_period)
        held[0].ack()
        held.append(got.get())
        got.assert_nothing(self.quiet_period)
        for incoming in held[1:]:
            incoming.ack()
        rest = got.get_many(2)
        for incoming in rest:
            incoming.ack()
        assert sorted(m.body for m in held + rest) == [b"0", b"1", b"2", b"3", b"4"]
        got.assert_nothing(self.quiet_period)

    def test_cancel_stops_new_deliveries_but_delivered_messages_stay_settleable(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        first = self.collector(ack=False)
        sub = make_driver().listen(topic, first)
        sender = make_driver()
        sender.send(topic, b"acked later", guarantee=Guarantee.AT_LEAST_ONCE)
        sender.send(topic, b"requeued later", guarantee=Guarantee.AT_LEAST_ONCE)
        held = {m.body: m for m in first.get_many(2)}
        sub.cancel()
        sender.send(topic, b"after cancel", guarantee=Guarantee.AT_LEAST_ONCE)
        first.assert_nothing(self.quiet_period)
        held[b"acked later"].ack()
        held[b"requeued later"].requeue()
        second = self.collector()
        make_driver().listen(topic, second)
        later = {m.body: m.attempts for m in second.get_many(2)}
        assert later == {b"requeued later": 2, b"after cancel": 1}
        second.assert_nothing(self.quiet_period)
        sub.close()
        second.assert_nothing(self.quiet_period)

    def test_close_from_inside_handler_does_not_deadlock(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        subscribed = threading.Event()
        holder: list[Subscription] = []
        outcome: queue.Queue[BaseException | None] = queue.Queue()

        def closing_handler(incoming: Incoming) -> None:
            subscribed.wait(self.wait)
            try:
                holder[0].close()
            except BaseException as exc:
                outcome.put(exc)
            else:
                outcome.put(None)

        holder.append(make_driver().listen(topic, closing_handler))
        subscribed.set()
        make_driver().send(topic, b"close now", guarantee=Guarantee.AT_LEAST_ONCE)
        assert outcome.get(timeout=self.wait) is None
        # The message was unsettled when its subscription closed: redelivered.
        second = self.collector()
        make_driver().listen(topic, second)
        incoming = second.get()
        assert (incoming.body, incoming.attempts) == (b"close now", 2)

    def test_close_and_cancel_are_idempotent(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        driver = make_driver()
        sub = driver.listen(address_factory(), self.collector())
        sub.cancel()
        sub.cancel()
        sub.close()
        sub.close()
        inbox = driver.open_inbox(lambda body: None)
        inbox.close()
        inbox.close()
        driver.close()
        driver.close()

    # --- inboxes --------------------------------------------------------------------

    def test_inbox_round_trip(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        server = make_driver()

        def reply(incoming: Incoming) -> None:
            reply_to, _, payload = incoming.body.partition(b"|")
            server.send_to_inbox(reply_to.decode(), b"re: " + payload)
            incoming.ack()

        server.listen(topic, reply)
        client = make_driver()
        replies = InboxCollector(self.wait)
        inbox = client.open_inbox(replies)
        assert isinstance(inbox.address, str)
        for word in (b"ping", b"pong"):
            client.send(
                topic, inbox.address.encode() + b"|" + word, guarantee=Guarantee.AT_MOST_ONCE
            )
            assert replies.get() == b"re: " + word
        replies.assert_nothing(self.quiet_period)

    def test_send_to_closed_inbox_is_undeliverable(self, make_driver: MakeDriver) -> None:
        """Detected at once where the driver can; otherwise it must return and stay usable."""
        owner, sender = make_driver(), make_driver()
        replies = InboxCollector(self.wait)
        inbox = owner.open_inbox(replies)
        sender.send_to_inbox(inbox.address, b"first")
        assert replies.get() == b"first"
        inbox.close()
        if not self.supports_closed_inbox_detection:
            # the broker reports it later (logged by the driver); the send itself returns
            sender.send_to_inbox(inbox.address, b"too late")
            fresh = InboxCollector(self.wait)
            still_open = owner.open_inbox(fresh)
            sender.send_to_inbox(still_open.address, b"after")
            assert fresh.get() == b"after"
            return
        with pytest.raises(Undeliverable):
            sender.send_to_inbox(inbox.address, b"too late")
        other = owner.open_inbox(InboxCollector(self.wait))
        owner.close()  # closing the driver closes its inboxes too
        with pytest.raises(Undeliverable):
            sender.send_to_inbox(other.address, b"too late")

    # --- adverts ----------------------------------------------------------------------

    def test_watch_reports_current_adverts_before_returning(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic, elsewhere = address_factory(), address_factory()
        publisher = make_driver()
        publisher.advertise(address_factory.server(topic, "s1"), b"v1", ttl=60)
        publisher.advertise(address_factory.server(topic, "s2"), b"v2", ttl=60)
        publisher.advertise(address_factory.server(elsewhere, "s3"), b"v3", ttl=60)
        seen = AdvertCollector(self.wait)
        make_driver().watch_adverts(topic.exchange, topic.topic, seen)
        snapshot = {seen.get_nowait(), seen.get_nowait()}
        assert snapshot == {("s1", b"v1"), ("s2", b"v2")}
        seen.assert_nothing(self.quiet_period)

    def test_advert_refresh_is_reported(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        seen = AdvertCollector(self.wait)
        make_driver().watch_adverts(topic.exchange, topic.topic, seen)
        publisher = make_driver()
        server = address_factory.server(topic, "s1")
        publisher.advertise(server, b"v1", ttl=60)
        assert seen.next_for("s1") == b"v1"
        publisher.advertise(server, b"v1", ttl=60)  # a plain refresh is reported too
        assert seen.next_for("s1") == b"v1"
        publisher.advertise(server, b"v2", ttl=60)
        assert seen.next_for("s1") == b"v2"

    def test_withdraw_is_reported_as_none(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        publisher = make_driver()
        server = address_factory.server(topic, "s1")
        publisher.advertise(server, b"v1", ttl=60)
        seen = AdvertCollector(self.wait)
        make_driver().watch_adverts(topic.exchange, topic.topic, seen)
        assert seen.next_for("s1") == b"v1"
        publisher.withdraw(server)
        assert seen.next_for("s1") is None
        late = AdvertCollector(self.wait)
        make_driver().watch_adverts(topic.exchange, topic.topic, late)
        late.assert_nothing(self.quiet_period)

    def test_advert_expires_after_ttl(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        if not self.supports_advert_expiry:
            pytest.skip("driver leaves advert expiry to rpclib (supports_advert_expiry)")
        topic = address_factory()
        seen = AdvertCollector(self.wait + self.advert_expiry_ttl)
        make_driver().watch_adverts(topic.exchange, topic.topic, seen)
        publisher = make_driver()  # stays open: it just stops refreshing, like a hung server
        publisher.advertise(address_factory.server(topic, "s1"), b"v1", ttl=self.advert_expiry_ttl)
        assert seen.next_for("s1") == b"v1"
        assert seen.next_for("s1") is None

    # --- lifecycle and robustness ---------------------------------------------------

    def test_closed_driver_raises_transport_error(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        server = address_factory.server(topic)
        driver = make_driver()
        driver.listen(topic, self.collector())
        inbox = make_driver().open_inbox(lambda body: None)
        driver.close()
        calls: list[tuple[str, Callable[[], object]]] = [
            ("send", lambda: driver.send(topic, b"x", guarantee=Guarantee.AT_LEAST_ONCE)),
            ("listen", lambda: driver.listen(topic, self.collector())),
            ("declare", lambda: driver.declare(topic)),
            ("open_inbox", lambda: driver.open_inbox(lambda body: None)),
            ("send_to_inbox", lambda: driver.send_to_inbox(inbox.address, b"x")),
            ("advertise", lambda: driver.advertise(server, b"x", ttl=60)),
            ("withdraw", lambda: driver.withdraw(server)),
            ("watch_adverts", lambda: driver.watch_adverts(topic.exchange, topic.topic, ignore)),
        ]
        if self.supports_dead_letter_inspection:
            calls.append(("dead_letters", lambda: driver.dead_letters()))
        for name, call in calls:
            try:
                call()
            except TransportError:
                continue
            pytest.fail(f"{name}() on a closed driver did not raise TransportError")

    def test_large_body_intact(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        body = random.Random(1).randbytes(1 << 20)
        got = self.collector()
        make_driver().listen(topic, got)
        replies = InboxCollector(self.wait)
        inbox = make_driver().open_inbox(replies)
        sender = make_driver()
        sender.send(topic, body, guarantee=Guarantee.AT_LEAST_ONCE)
        sender.send_to_inbox(inbox.address, body)
        assert got.get().body == body
        assert replies.get() == body

    def test_empty_body_intact(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector()
        make_driver().listen(topic, got)
        make_driver().send(topic, b"", guarantee=Guarantee.AT_MOST_ONCE)
        assert got.get().body == b""

    def test_many_messages_from_several_threads_all_arrive(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        topic = address_factory()
        got = self.collector()
        make_driver().listen(topic, got, prefetch=8)
        make_driver().listen(topic, got, prefetch=8)
        sender = make_driver()  # one driver, shared by the threads
        threads, per_thread = 4, 200
        errors: list[BaseException] = []

        def produce(n: int) -> None:
            try:
                for i in range(per_thread):
                    sender.send(topic, b"%d-%d" % (n, i), guarantee=Guarantee.AT_LEAST_ONCE)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(self.wait)
        assert not errors
        received = {m.body for m in got.get_many(threads * per_thread)}
        expected = {b"%d-%d" % (n, i) for n in range(threads) for i in range(per_thread)}
        assert received == expected


class BoundedDeadLetterContract(DriverContract):
    """The contract plus filling the dead-letter bound, for drivers whose test
    configuration makes the bound small enough to fill (rabbit://'s fixed 10,000 is
    filled in tests/security/test_flood_rabbit.py)."""

    dead_letter_bound: ClassVar[int]
    """The most dead letters the driver keeps (``make_driver``'s configuration)."""

    def test_dead_letters_are_bounded_keeping_the_newest(
        self, make_driver: MakeDriver, address_factory: AddressFactory
    ) -> None:
        bound = self.dead_letter_bound
        topic = address_factory()
        got = self.collector(ack=False)
        make_driver().listen(topic, got)
        sender = make_driver()
        total = bound + 50
        for i in range(total):
            sender.send(topic, b"%d" % i, guarantee=Guarantee.AT_LEAST_ONCE)
        for _ in range(total):
            got.get().dead_letter("flood")
        reader = make_driver()
        newest = b"%d" % (total - 1)

        def settled() -> bool:
            # dead_letter() need not wait for the copy to be stored: wait for the newest
            # to arrive and the bound to be restored after it.
            kept = reader.dead_letters(total)
            return len(kept) <= bound and any(d.body == newest for d in kept)

        self.wait_for(settled, f"the newest dead letter, and at most {bound} in all")
        kept = reader.dead_letters(total)
        assert len(kept) <= bound
        assert kept[-1].body == newest  # the newest are kept, the oldest dropped
