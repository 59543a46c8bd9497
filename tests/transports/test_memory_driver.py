"""The memory driver: the shared contract, plus buses, fault injection and URL options."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from rpclib.exceptions import InvalidTransportURL, TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee, Incoming, Subscription
from rpclib.transports.memory import MemoryDriver, reset_bus
from rpclib.transports.url import parse_url
from tests.transports.driver_contract import (
    AddressFactory,
    AdvertCollector,
    BoundedDeadLetterContract,
    Collector,
    DriverContract,
    InboxCollector,
    MakeDriver,
    fanout,
)

WAIT = 10.0
QUIET = 0.2


def memory(bus: str, query: str = "") -> MemoryDriver:
    return MemoryDriver(parse_url(f"memory://{bus}" + (f"?{query}" if query else "")))


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def bus() -> Iterator[str]:
    """A bus name no other test uses, dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    reset_bus(name)


@pytest.fixture
def drivers(bus: str) -> Iterator[Callable[..., MemoryDriver]]:
    """``drivers(query="")`` opens a driver on the test's bus; all are closed at teardown."""
    opened: list[MemoryDriver] = []

    def make(query: str = "", *, on: str | None = None) -> MemoryDriver:
        driver = memory(on or bus, query)
        opened.append(driver)
        return driver

    yield make
    for driver in opened:
        driver.close()


@pytest.fixture
def names() -> AddressFactory:
    return AddressFactory(exchange="ex")


# --- the contract ---------------------------------------------------------------------


class TestMemoryDriverContract(BoundedDeadLetterContract):
    quiet_period = QUIET
    dead_letter_bound = 10_000

    @pytest.fixture
    def make_driver(self, drivers: Callable[..., MemoryDriver]) -> MakeDriver:
        return drivers


class TestMemoryDriverContractUnderDelayAndReorder(DriverContract):
    """The contract holds with asynchronous, reordered delivery (as on a real broker).

    This also proves the contract suite itself does not rely on synchronous delivery.
    """

    quiet_period = QUIET

    @pytest.fixture
    def make_driver(self, drivers: Callable[..., MemoryDriver]) -> MakeDriver:
        return lambda: drivers("delay=0.02&reorder=0.3&faults=all&seed=7")


# --- buses ------------------------------------------------------------------------------


class TestBuses:
    def test_buses_are_isolated(self, names: AddressFactory) -> None:
        here_bus, there_bus = f"t{uuid.uuid4().hex}", f"t{uuid.uuid4().hex}"
        try:
            here, there = memory(here_bus), memory(there_bus)
            topic = names()
            here.listen(topic, Collector(WAIT))
            here.advertise(names.server(topic, "s1"), b"ad", ttl=60)
            inbox = here.open_inbox(InboxCollector(WAIT))
            for guarantee in Guarantee:
                with pytest.raises(Undeliverable):
                    there.send(topic, b"x", guarantee=guarantee)
            with pytest.raises(Undeliverable):
                there.send_to_inbox(inbox.address, b"x")
            seen = AdvertCollector(WAIT)
            there.watch_adverts(topic.exchange, topic.topic, seen)
            seen.assert_nothing(QUIET)
        finally:
            reset_bus(here_bus)
            reset_bus(there_bus)

    def test_bus_is_named_by_url_host(self, bus: str) -> None:
        upper, lower = memory(bus.upper()), memory(bus)
        assert upper.bus_name == lower.bus_name == bus
        default = memory("")
        assert default.bus_name == "default"
        default.close()
        upper.declare(Address("ex", "shared"))
        lower.send(Address("ex", "shared"), b"x", guarantee=Guarantee.AT_LEAST_ONCE)
        for driver in (upper, lower):
            driver.close()

    def test_memory_scheme_loads_memory_driver(self, bus: str) -> None:
        driver = load_driver(f"memory://{bus}")
        assert isinstance(driver, MemoryDriver)
        driver.close()

    def test_bus_outlives_its_drivers(self, drivers: Callable[..., MemoryDriver]) -> None:
        topic = Address("ex", "durable")
        first = drivers()
        first.declare(topic, "pool")
        first.send(topic, b"kept", guarantee=Guarantee.AT_LEAST_ONCE)
        first.close()
        got = Collector(WAIT)
        drivers().listen(topic, got, group="pool")
        assert got.get().body == b"kept"

    def test_reset_bus_drops_state_and_disconnects_drivers(self, bus: str) -> None:
        topic = Address("ex", "t")
        old = memory(bus)
        old.listen(topic, Collector(WAIT))
        reset_bus(bus)
        with pytest.raises(TransportError, match="reset"):
            old.send(topic, b"x", guarantee=Guarantee.AT_MOST_ONCE)
        old.close()  # harmless on a dropped bus
        new = memory(bus)
        with pytest.raises(Undeliverable):
            new.send(topic, b"x", guarantee=Guarantee.AT_LEAST_ONCE)
        new.close()

    def test_no_threads_left_after_close_and_reset(self, names: AddressFactory) -> None:
        name = f"t{uuid.uuid4().hex}"
        driver = memory(name, "delay=0.01&reorder=0.5&seed=3")
        topic = names()
        driver.listen(topic, Collector(WAIT))
        driver.listen(fanout(topic), Collector(WAIT))
        driver.open_inbox(InboxCollector(WAIT))
        driver.watch_adverts(topic.exchange, topic.topic, AdvertCollector(WAIT))
        driver.advertise(names.server(topic, "s1"), b"ad", ttl=60)
        driver.send(topic, b"x", guarantee=Guarantee.AT_LEAST_ONCE)
        assert any(t.name.startswith(f"rpclib-memory:{name}:") for t in threading.enumerate())
        driver.close()
        reset_bus(name)
        wait_until(
            lambda: (
                not [
                    t for t in threading.enumerate() if t.name.startswith(f"rpclib-memory:{name}:")
                ]
            ),
            "the bus threads to exit",
        )


# --- delivery semantics beyond the shared contract ------------------------------------------


class TestSettlement:
    def deliver_one(self, drivers: Callable[..., MemoryDriver], names: AddressFactory) -> Incoming:
        topic = names()
        got = Collector(WAIT, ack=False)
        drivers().listen(topic, got)
        drivers().send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        return got.get()

    @pytest.mark.parametrize("first", ["ack", "requeue", "dead_letter"])
    @pytest.mark.parametrize("second", ["ack", "requeue", "dead_letter"])
    def test_settling_twice_raises(
        self,
        drivers: Callable[..., MemoryDriver],
        names: AddressFactory,
        first: str,
        second: str,
    ) -> None:
        incoming = self.deliver_one(drivers, names)
        settle(incoming, first)
        with pytest.raises(RuntimeError, match="already settled"):
            settle(incoming, second)

    def test_concurrent_settlement_succeeds_exactly_once(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        incoming = self.deliver_one(drivers, names)
        start = threading.Barrier(8)
        outcomes: list[str] = []

        def race() -> None:
            start.wait()
            try:
                incoming.ack()
                outcomes.append("ok")
            except RuntimeError:
                outcomes.append("refused")

        threads = [threading.Thread(target=race) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert sorted(outcomes) == ["ok"] + ["refused"] * 7

    def test_settling_after_close_is_ignored(
        self,
        drivers: Callable[..., MemoryDriver],
        names: AddressFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="rpclib.transports.memory")
        topic = names()
        got = Collector(WAIT, ack=False)
        sub = drivers().listen(topic, got)
        drivers().send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        incoming = got.get()
        sub.close()
        incoming.ack()  # too late: it was requeued; no error
        assert "after its subscription closed" in caplog.text
        again = Collector(WAIT)
        drivers().listen(topic, again)
        assert again.get().attempts == 2

    def test_handler_exception_is_logged_with_its_traceback(
        self,
        drivers: Callable[..., MemoryDriver],
        names: AddressFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        topic = names()
        got = Collector(WAIT)

        def crash_first(incoming: Incoming) -> None:
            if incoming.attempts == 1:
                raise ValueError("consumer bug")
            got(incoming)

        drivers().listen(topic, crash_first)
        drivers().send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        assert got.get().attempts == 2
        [record] = [r for r in caplog.records if r.name == "rpclib.transports.memory"]
        assert record.levelno == logging.ERROR and record.exc_info is not None
        assert "ValueError: consumer bug" in caplog.text

    def test_handler_exception_after_settling_does_not_requeue(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT)

        def ack_then_crash(incoming: Incoming) -> None:
            got(incoming)
            raise ValueError("after ack")

        drivers().listen(topic, ack_then_crash)
        drivers().send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        assert got.get().attempts == 1
        got.assert_nothing(QUIET)

    def test_requeued_message_returns_to_the_head_of_its_queue(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        drivers().listen(topic, got, prefetch=1)
        sender = drivers()
        for body in (b"first", b"second"):
            sender.send(topic, body, guarantee=Guarantee.AT_LEAST_ONCE)
        got.get().requeue()
        again = got.get()
        assert (again.body, again.attempts) == (b"first", 2)
        again.ack()
        assert got.get().body == b"second"

    def test_cancel_inside_handler_does_not_deadlock(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        ready = threading.Event()
        done = threading.Event()
        holder: list[Subscription] = []

        def handler(incoming: Incoming) -> None:
            ready.wait(WAIT)
            holder[0].cancel()
            incoming.ack()  # still settleable after cancel
            done.set()

        holder.append(drivers().listen(topic, handler))
        ready.set()
        sender = drivers()
        sender.send(topic, b"m", guarantee=Guarantee.AT_LEAST_ONCE)
        assert done.wait(WAIT)
        with pytest.raises(Undeliverable):
            sender.send(topic, b"x", guarantee=Guarantee.AT_MOST_ONCE)

    def test_competing_consumers_both_get_work(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        seen: queue.Queue[str] = queue.Queue()

        def consumer(name: str) -> Callable[[Incoming], None]:
            def handle(incoming: Incoming) -> None:
                incoming.ack()
                seen.put(name)

            return handle

        drivers().listen(topic, consumer("left"))
        drivers().listen(topic, consumer("right"))
        sender = drivers()
        for i in range(40):
            sender.send(topic, b"%d" % i, guarantee=Guarantee.AT_LEAST_ONCE)
        # The first two messages go one to each idle consumer (round robin).
        counts = Counter(seen.get(timeout=WAIT) for _ in range(40))
        assert counts["left"] >= 1 and counts["right"] >= 1

    def test_bad_arguments_are_rejected(self, drivers: Callable[..., MemoryDriver]) -> None:
        driver = drivers()
        topic = Address("ex", "t")
        with pytest.raises(ValueError, match="groups apply to topics only"):
            driver.listen(Address("ex", "t", server="s"), Collector(WAIT), group="g")
        with pytest.raises(ValueError, match="groups apply to topics only"):
            driver.listen(fanout(topic), Collector(WAIT), group="g")
        with pytest.raises(ValueError, match="fanout"):
            driver.declare(fanout(topic))
        with pytest.raises(ValueError, match="prefetch"):
            driver.listen(topic, Collector(WAIT), prefetch=0)
        with pytest.raises(ValueError, match="server"):
            driver.advertise(topic, b"x", ttl=10)
        with pytest.raises(ValueError, match="server"):
            driver.withdraw(topic)
        for ttl in (0, -1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="ttl"):
                driver.advertise(Address("ex", "t", server="s"), b"x", ttl=ttl)
        with pytest.raises(ValueError, match="limit"):
            driver.dead_letters(-1)

    def test_dead_letters_oldest_first_up_to_limit(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        driver = drivers()
        driver.listen(topic, got, group="g")
        for i in range(3):
            driver.send(topic, b"%d" % i, guarantee=Guarantee.AT_LEAST_ONCE)
            got.get().dead_letter(f"r{i}")
        assert [d.reason for d in driver.dead_letters(2)] == ["r0", "r1"]
        assert driver.dead_letters(0) == []
        assert driver.dead_letters()[0].address == f"{topic} [group g]"
        assert driver.stats()["dead_letters"] == 3

    def test_dead_letters_keep_at_most_64_mib_of_bodies_newest_first(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        driver = drivers()
        driver.listen(topic, got)
        mib = 1024 * 1024
        for i in range(70):
            driver.send(topic, b"%02d" % i + b"x" * (mib - 2), guarantee=Guarantee.AT_LEAST_ONCE)
            got.get().dead_letter("big")
        kept = driver.dead_letters(100)
        assert sum(len(d.body) for d in kept) <= 64 * mib
        assert [d.body[:2] for d in kept] == [b"%02d" % i for i in range(70 - len(kept), 70)]


class TestRouting:
    def test_at_most_once_goes_only_to_groups_listening_now(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        live = Collector(WAIT)
        drivers().listen(topic, live, group="live")
        sender = drivers()
        sender.declare(topic, "idle")
        sender.send(topic, b"now or never", guarantee=Guarantee.AT_MOST_ONCE)
        sender.send(topic, b"keep", guarantee=Guarantee.AT_LEAST_ONCE)
        assert sorted(m.body for m in live.get_many(2)) == [b"keep", b"now or never"]
        idle = Collector(WAIT)
        drivers().listen(topic, idle, group="idle")
        assert idle.get().body == b"keep"
        idle.assert_nothing(QUIET)

    def test_closing_the_last_fanout_listener_makes_fanout_undeliverable(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        listener = drivers()
        first = listener.listen(fanout(topic), Collector(WAIT))
        second = listener.listen(fanout(topic), Collector(WAIT))
        sender = drivers()
        first.close()
        sender.send(fanout(topic), b"x", guarantee=Guarantee.AT_MOST_ONCE)
        second.cancel()
        with pytest.raises(Undeliverable, match="fanout"):
            sender.send(fanout(topic), b"x", guarantee=Guarantee.AT_LEAST_ONCE)

    def test_expired_messages_are_discarded_and_counted(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        sender = drivers()
        sender.declare(topic)
        sender.send(topic, b"stale", guarantee=Guarantee.AT_LEAST_ONCE, expires_at=time.time() - 1)
        sender.send(topic, b"fresh", guarantee=Guarantee.AT_LEAST_ONCE, expires_at=time.time() + 60)
        sender.send(topic, b"no deadline", guarantee=Guarantee.AT_LEAST_ONCE)
        assert sender.stats()["expired"] == 1  # swept while waiting in the queue
        assert sender.stats()["ready"] == 2
        got = Collector(WAIT)
        drivers().listen(topic, got)
        assert sorted(m.body for m in got.get_many(2)) == [b"fresh", b"no deadline"]
        got.assert_nothing(QUIET)

    def test_message_expiring_before_hand_over_is_discarded(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        got = Collector(WAIT, ack=False)
        receiver = drivers()
        receiver.listen(topic, got, prefetch=1)
        sender = drivers()
        sender.send(topic, b"busy", guarantee=Guarantee.AT_LEAST_ONCE)
        blocker = got.get()  # the consumer is now out of credit
        sender.send(topic, b"late", guarantee=Guarantee.AT_LEAST_ONCE, expires_at=time.time())
        blocker.ack()
        sender.send(topic, b"after", guarantee=Guarantee.AT_LEAST_ONCE)
        follow = got.get()
        assert follow.body == b"after"
        follow.ack()
        assert receiver.stats()["expired"] == 1


class TestAdverts:
    def test_close_withdraws_only_the_closing_drivers_adverts(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        leaving, staying = drivers(), drivers()
        leaving.advertise(names.server(topic, "leaving"), b"a", ttl=60)
        staying.advertise(names.server(topic, "staying"), b"b", ttl=60)
        seen = AdvertCollector(WAIT)
        drivers().watch_adverts(topic.exchange, topic.topic, seen)
        assert {seen.get_nowait(), seen.get_nowait()} == {("leaving", b"a"), ("staying", b"b")}
        leaving.close()
        assert seen.get() == ("leaving", None)
        seen.assert_nothing(QUIET)

    def test_refresh_postpones_expiry(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        server = names.server(topic, "s1")
        events: queue.Queue[tuple[float, bytes | None]] = queue.Queue()
        drivers().watch_adverts(
            topic.exchange, topic.topic, lambda name, body: events.put((time.monotonic(), body))
        )
        publisher = drivers()
        ttl = 0.3
        for i in range(3):
            before_last = time.monotonic()
            publisher.advertise(server, b"v%d" % i, ttl=ttl)
            time.sleep(ttl / 3)  # pacing: a server's heartbeat, not a wait for a result
        while events.get(timeout=WAIT)[1] != b"v2":
            pass
        expired_at, body = events.get(timeout=WAIT)
        assert body is None
        # The first advert's timer (due at ~0.3 s) must not remove the refreshed one.
        assert expired_at >= before_last + ttl

    def test_watch_handler_exception_does_not_stop_the_watch(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        seen = AdvertCollector(WAIT)

        def flaky(server: str, body: bytes | None) -> None:
            seen(server, body)
            raise RuntimeError("watcher bug")

        drivers().watch_adverts(topic.exchange, topic.topic, flaky)
        publisher = drivers()
        publisher.advertise(names.server(topic, "s1"), b"1", ttl=60)
        publisher.advertise(names.server(topic, "s1"), b"2", ttl=60)
        assert [seen.get(), seen.get()] == [("s1", b"1"), ("s1", b"2")]

    def test_inbox_handler_exception_does_not_stop_the_inbox(
        self, drivers: Callable[..., MemoryDriver]
    ) -> None:
        replies = InboxCollector(WAIT)

        def flaky(body: bytes) -> None:
            replies(body)
            raise RuntimeError("inbox bug")

        inbox = drivers().open_inbox(flaky)
        sender = drivers()
        sender.send_to_inbox(inbox.address, b"1")
        sender.send_to_inbox(inbox.address, b"2")
        assert [replies.get(), replies.get()] == [b"1", b"2"]


# --- fault injection -----------------------------------------------------------------------


def collect(
    drivers: Callable[..., MemoryDriver],
    names: AddressFactory,
    query: str,
    count: int,
    guarantee: Guarantee,
) -> tuple[MemoryDriver, Collector, list[bytes]]:
    """Send ``count`` numbered messages through a faulty sender to one consumer."""
    topic = names()
    got = Collector(WAIT)
    drivers().listen(topic, got, prefetch=count * 2)
    sender = drivers(query)
    bodies = [b"%03d" % i for i in range(count)]
    for body in bodies:
        sender.send(topic, body, guarantee=guarantee)
    return sender, got, bodies


class TestFaultInjection:
    def test_drop_loses_at_most_once_messages(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        sender, got, bodies = collect(
            drivers, names, "drop=0.3&seed=1", 200, Guarantee.AT_MOST_ONCE
        )
        decisions = sender.fault_decisions()
        dropped = sender.fault_counts["dropped"]
        assert 0 < dropped < 200 and sum(d.drop for d in decisions) == dropped
        expected = [body for body, d in zip(bodies, decisions, strict=True) if not d.drop]
        assert sorted(m.body for m in got.get_many(len(expected))) == expected
        got.assert_nothing(QUIET)

    def test_drop_never_loses_at_least_once_messages(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        sender, got, bodies = collect(
            drivers, names, "drop=0.5&seed=2", 100, Guarantee.AT_LEAST_ONCE
        )
        decisions = sender.fault_decisions()
        assert 0 < sender.fault_counts["dropped"] < 100
        attempts = {m.body: m.attempts for m in got.get_many(100)}
        assert attempts == {
            body: 2 if d.drop else 1 for body, d in zip(bodies, decisions, strict=True)
        }
        got.assert_nothing(QUIET)

    def test_duplicate_delivers_extra_copies(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        sender, got, bodies = collect(
            drivers, names, "duplicate=0.3&seed=3", 100, Guarantee.AT_LEAST_ONCE
        )
        decisions = sender.fault_decisions()
        duplicated = sender.fault_counts["duplicated"]
        assert 0 < duplicated < 100
        received = Counter(m.body for m in got.get_many(100 + duplicated))
        assert received == {
            body: 2 if d.duplicate else 1 for body, d in zip(bodies, decisions, strict=True)
        }
        got.assert_nothing(QUIET)

    def test_reorder_changes_order_but_loses_nothing(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        sender, got, bodies = collect(
            drivers, names, "reorder=0.3&seed=4", 100, Guarantee.AT_MOST_ONCE
        )
        assert 0 < sender.fault_counts["reordered"] < 100
        received = [m.body for m in got.get_many(100)]
        assert sorted(received) == bodies
        assert received != bodies
        got.assert_nothing(QUIET)

    def test_reordered_message_is_released_without_a_successor(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        sender, got, _ = collect(drivers, names, "reorder=1&seed=5", 1, Guarantee.AT_MOST_ONCE)
        assert got.get().body == b"000"
        assert sender.fault_counts["reordered"] == 1

    def test_delay_defers_enqueueing(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        topic = names()
        sender = drivers("delay=60&seed=6")
        sender.declare(topic)
        sender.send(topic, b"slow", guarantee=Guarantee.AT_LEAST_ONCE)
        [decision] = sender.fault_decisions()
        assert decision.delay > 5  # seed 6: far longer than this check takes
        assert sender.stats()["ready"] == 0
        assert sender.fault_counts["delayed"] == 1

    def test_delayed_messages_all_arrive(
        self, drivers: Callable[..., MemoryDriver], names: AddressFactory
    ) -> None:
        sender, got, bodies = collect(
            drivers, names, "delay=0.05&seed=7", 50, Guarantee.AT_MOST_ONCE
        )
        assert sender.fault_counts["delayed"] == 50
        assert sorted(m.body for m in got.get_many(50)) == bodies

    def test_same_seed_same_decisions(self, names: AddressFactory) -> None:
        query = "drop=0.2&duplicate=0.2&reorder=0.2&delay=0.001&faults=all"
        topic = names()

        def run(seed: int) -> tuple[dict[str, int], list[tuple[int, str, bool, bool, bool, float]]]:
            name = f"t{uuid.uuid4().hex}"
            try:
                driver = memory(name, f"{query}&seed={seed}")
                driver.declare(topic)
                inbox = driver.open_inbox(lambda body: None)
                for i in range(100):
                    driver.send(topic, b"%d" % i, guarantee=Guarantee.AT_LEAST_ONCE)
                    driver.send_to_inbox(inbox.address, b"%d" % i)
                counts = driver.fault_counts
                decisions: list[tuple[int, str, bool, bool, bool, float]] = [
                    (d.index, d.traffic, d.drop, d.duplicate, d.reorder, d.delay)
                    for d in driver.fault_decisions()
                ]
                driver.close()
                return counts, decisions
            finally:
                reset_bus(name)

        first, again, other = run(42), run(42), run(43)
        assert first == again
        assert first != other
        assert all(first[0][kind] > 0 for kind in ("dropped", "duplicated", "reordered", "delayed"))

    def test_unseeded_driver_reports_a_seed_that_reproduces_it(self, bus: str) -> None:
        topic = Address("ex", "t")

        def decisions(driver: MemoryDriver) -> list[tuple[bool, bool]]:
            driver.declare(topic)
            for _ in range(50):
                driver.send(topic, b"x", guarantee=Guarantee.AT_LEAST_ONCE)
            driver.close()
            return [(d.drop, d.duplicate) for d in driver.fault_decisions()]

        unseeded = memory(bus, "drop=0.5&duplicate=0.5")
        replay = memory(bus, f"drop=0.5&duplicate=0.5&seed={unseeded.fault_seed}")
        assert decisions(unseeded) == decisions(replay)

    @pytest.mark.parametrize(
        ("scope", "messages_dropped", "replies_dropped"),
        [("messages", True, False), ("replies", False, True), ("all", True, True)],
    )
    def test_faults_option_selects_the_traffic(
        self,
        drivers: Callable[..., MemoryDriver],
        names: AddressFactory,
        scope: str,
        messages_dropped: bool,
        replies_dropped: bool,
    ) -> None:
        topic = names()
        got = Collector(WAIT)
        replies = InboxCollector(WAIT)
        receiver = drivers()
        receiver.listen(topic, got)
        inbox = receiver.open_inbox(replies)
        sender = drivers(f"drop=1&faults={scope}")
        sender.send(topic, b"message", guarantee=Guarantee.AT_MOST_ONCE)
        sender.send_to_inbox(inbox.address, b"reply")
        assert sender.fault_counts["dropped"] == messages_dropped + replies_dropped
        if messages_dropped:
            got.assert_nothing(QUIET)
        else:
            assert got.get().body == b"message"
        if replies_dropped:
            replies.assert_nothing(QUIET)
        else:
            assert replies.get() == b"reply"

    def test_undeliverable_sends_draw_no_decision(
        self, drivers: Callable[..., MemoryDriver]
    ) -> None:
        sender = drivers("drop=0.5&seed=8")
        with pytest.raises(Undeliverable):
            sender.send(Address("ex", "nobody"), b"x", guarantee=Guarantee.AT_MOST_ONCE)
        assert sender.fault_decisions() == []


# --- URL options ---------------------------------------------------------------------------


class TestUrlOptions:
    @pytest.mark.parametrize(
        ("url", "named"),
        [
            ("memory://?bogus=1", "bogus"),
            ("memory://?drop=1.5", "drop"),
            ("memory://?drop=abc", "drop"),
            ("memory://?duplicate=-0.1", "duplicate"),
            ("memory://?reorder=nan", "reorder"),
            ("memory://?delay=-1", "delay"),
            ("memory://?delay=inf", "delay"),
            ("memory://?seed=x", "seed"),
            ("memory://?faults=everything", "faults"),
            ("memory://bus:5672", "port"),
            ("memory://a,b", "host list"),
            ("memory://bus/vhost", "path"),
        ],
    )
    def test_bad_url_is_rejected_naming_the_problem(self, url: str, named: str) -> None:
        with pytest.raises(InvalidTransportURL, match=named) as excinfo:
            load_driver(url)
        assert "secret" not in str(excinfo.value)

    @pytest.mark.parametrize(
        "query",
        ["", "drop=0&duplicate=1", "reorder=0.5&seed=-3", "delay=0.5&faults=all", "faults=replies"],
    )
    def test_good_options_are_accepted(self, bus: str, query: str) -> None:
        memory(bus, query).close()


def settle(incoming: Incoming, how: str) -> None:
    if how == "dead_letter":
        incoming.dead_letter("test")
    else:
        getattr(incoming, how)()
