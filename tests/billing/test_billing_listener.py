"""Billing end to end over memory://: notifier, bus faults, listener pools, ledger."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.transports.memory import MemoryDriver
from services.billing import Ledger, ProjectUsage, format_usage, make_listener
from services.notifications import CREATE_END, CREATE_START, TOPIC
from tests.billing.support import WAIT, Instance, hours, wait_until

FAULTS = "duplicate=0.3&reorder=0.3&seed=5"
DAY = (hours(0), hours(24))

A1 = Instance("proj-a", vcpus=2, memory_mb=2048, disk_gb=20)
A2 = Instance("proj-a", vcpus=4, memory_mb=4096, disk_gb=40)
B1 = Instance("proj-b", vcpus=1, memory_mb=512, disk_gb=10)
B2 = Instance("proj-b", vcpus=8, memory_mb=16384, disk_gb=80)
C1 = Instance("proj-c", vcpus=2, memory_mb=1024, disk_gb=5)
C2 = Instance("proj-c", vcpus=1, memory_mb=256, disk_gb=1)

BILLED_EVENTS = [
    (A1, A1.created(2)),  # 6 h
    (A1, A1.deleted(8)),
    (A2, A2.created(20)),  # running: 4 h to the end of the day
    (B1, B1.exists(0, 12)),  # create.end missed: 18 h from audit evidence
    (B1, B1.exists(12, 24)),
    (B1, B1.deleted(18)),
    (B2, B2.created(-6)),  # 3 h of the day
    (B2, B2.deleted(3)),
    (C1, C1.exists(0, 12)),  # 3.5 h: the audit window does not bill before launch
    (C1, C1.created(6)),
    (C1, C1.deleted(9.5)),
    (C2, C2.created(25)),  # launched after the day
]
EXPECTED = [
    ProjectUsage("proj-a", 2, 2 * 6 + 4 * 4, 2048 * 6 + 4096 * 4, 20 * 6 + 40 * 4),
    ProjectUsage("proj-b", 2, 1 * 18 + 8 * 3, 512 * 18 + 16384 * 3, 10 * 18 + 80 * 3),
    ProjectUsage("proj-c", 1, 2 * 3.5, 1024 * 3.5, 5 * 3.5),
]

Start = Callable[[rpclib.NotificationListener], rpclib.NotificationListener]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start listeners; stop them all at teardown."""
    started: list[rpclib.NotificationListener] = []

    def run(listener: rpclib.NotificationListener) -> rpclib.NotificationListener:
        listener.start()
        started.append(listener)
        return listener

    yield run
    for listener in started:
        listener.stop()
    for listener in started:
        assert listener.wait(WAIT)


@pytest.fixture
def faulty(bus_url: str) -> Iterator[rpclib.Transport]:
    """The notifier's connection to the bus: it duplicates and reorders messages."""
    transport = rpclib.get_transport(f"{bus_url}?{FAULTS}")
    yield transport
    transport.close()


def emit_day(transport: rpclib.Transport, *, pools: tuple[str, ...] = ("billing",)) -> int:
    """Send the day's notifications (shuffled, with create.start noise); how many were sent."""
    events = [(e.kind.value, vm.payload(e)) for vm, e in BILLED_EVENTS]
    events += [(CREATE_START, {"instance_uuid": vm.uuid}) for vm in (A1, B2)]
    random.Random(5).shuffle(events)
    with rpclib.Notifier(
        transport, "conductor.host1", topics=[TOPIC], ensure_pools=pools
    ) as notifier:
        for event_type, payload in events:
            notifier.info({"request_id": "req-billing"}, event_type, payload)
        assert notifier.flush(WAIT)
        assert notifier.stats.sent == len(events)
    return len(events)


def deliveries(transport: rpclib.Transport, sent: int) -> int:
    """How many copies of ``sent`` notifications each pool receives over ``transport``."""
    driver = transport.driver
    assert isinstance(driver, MemoryDriver)
    return sent + driver.fault_counts["duplicated"]


def handled(*listeners: rpclib.NotificationListener) -> int:
    return sum(listener.stats.handled for listener in listeners)


class MessageIds:
    """An endpoint of another pool: keeps the message ids it saw."""

    def __init__(self, expected: int) -> None:
        self.seen: set[str] = set()
        self.expected = expected
        self.all_seen = threading.Event()
        self._lock = threading.Lock()

    def info(
        self,
        ctx: Mapping[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: Mapping[str, Any],
    ) -> None:
        with self._lock:
            self.seen.add(metadata["message_id"])
            if len(self.seen) == self.expected:
                self.all_seen.set()


def test_usage_is_exact_over_a_bus_that_duplicates_and_reorders(
    transport: rpclib.Transport, faulty: rpclib.Transport, ledger: Ledger, start: Start
) -> None:
    listener = start(make_listener(transport, ledger))

    sent = emit_day(faulty)
    expected = deliveries(faulty, sent)
    wait_until(lambda: handled(listener) == expected, "every copy handled")

    assert expected > sent, "the bus duplicated nothing: the test proves nothing"
    assert ledger.message_count() == len(BILLED_EVENTS)
    assert ledger.usage(*DAY) == EXPECTED


def test_a_second_pool_gets_every_notification_without_disturbing_billing(
    transport: rpclib.Transport, faulty: rpclib.Transport, ledger: Ledger, start: Start
) -> None:
    audit = MessageIds(expected=len(BILLED_EVENTS) + 2)
    billing = start(make_listener(transport, ledger))
    start(rpclib.NotificationListener(transport, [rpclib.Target(topic=TOPIC)], [audit], "audit"))

    sent = emit_day(faulty, pools=("billing", "audit"))
    wait_until(lambda: handled(billing) == deliveries(faulty, sent), "billing handled all")

    assert audit.all_seen.wait(WAIT)
    assert ledger.usage(*DAY) == EXPECTED


def test_billing_listeners_competing_in_one_pool_count_each_event_once(
    transport: rpclib.Transport, faulty: rpclib.Transport, ledger_path: Path, start: Start
) -> None:
    with Ledger(ledger_path) as first, Ledger(ledger_path) as second:
        one = start(make_listener(transport, first))
        two = start(make_listener(transport, second))

        sent = emit_day(faulty)
        wait_until(lambda: handled(one, two) == deliveries(faulty, sent), "every copy handled")

        assert handled(one) and handled(two), "one listener took everything"
        assert first.usage(*DAY) == second.usage(*DAY) == EXPECTED


def test_a_malformed_payload_is_dead_lettered_naming_the_field_and_later_events_are_billed(
    transport: rpclib.Transport, ledger: Ledger, start: Start
) -> None:
    listener = start(make_listener(transport, ledger, max_attempts=3))
    bad = dict(A1.payload(A1.created(1)), vcpus="two")
    with rpclib.Notifier(transport, "conductor.host1", topics=[TOPIC]) as notifier:
        notifier.info({}, CREATE_END, bad)

    sent = emit_day(transport)
    wait_until(lambda: bool(transport.driver.dead_letters()), "a dead letter")
    wait_until(lambda: handled(listener) == sent, "the valid notifications handled")

    [dead] = transport.driver.dead_letters()
    assert "MalformedPayload" in dead.reason
    assert "instance.create.end payload field 'vcpus'" in dead.reason
    assert dead.attempts == 1  # malformed bytes never improve: not retried
    assert "permanent error, not retried" in dead.reason
    assert ledger.usage(*DAY) == EXPECTED


def test_the_report_of_a_billed_day_renders(
    transport: rpclib.Transport, ledger: Ledger, start: Start
) -> None:
    listener = start(make_listener(transport, ledger))
    sent = emit_day(transport)
    wait_until(lambda: handled(listener) == sent, "every notification handled")

    lines = format_usage(ledger.usage(*DAY)).splitlines()

    assert lines[0].split() == ["project", "instances", "vCPU-hours", "MB-hours", "GB-hours"]
    assert [line.split() for line in lines[2:5]] == [
        ["proj-a", "2", "28.00", "28,672.00", "280.00"],
        ["proj-b", "2", "42.00", "58,368.00", "420.00"],
        ["proj-c", "1", "7.00", "3,584.00", "17.50"],
    ]
    assert lines[-1].split() == ["total", "5", "77.00", "90,624.00", "717.50"]
