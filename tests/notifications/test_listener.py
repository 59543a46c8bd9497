"""NotificationListener: dispatch by priority, pools, filters, settlement, bad input."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.listener import NotificationFilter, NotificationListener, NotificationResult
from rpclib.notifier import Notifier
from rpclib.serializer import Serializer
from rpclib.target import Target
from rpclib.transport import Transport
from tests.notifications.helpers import (
    TOPIC,
    WAIT,
    Recorder,
    listen,
    send_raw,
    wait_until,
)

MakeTransport = Callable[[], Transport]


def _stop(*listeners: NotificationListener) -> None:
    for listener in listeners:
        listener.stop()
    for listener in listeners:
        assert listener.wait(WAIT)


@pytest.mark.parametrize(
    ("method", "priority"),
    [
        ("audit", "audit"),
        ("debug", "debug"),
        ("info", "info"),
        ("warn", "warn"),
        ("warning", "warn"),
        ("error", "error"),
        ("critical", "critical"),
        ("sample", "sample"),
    ],
)
def test_each_priority_reaches_the_endpoint_method_of_that_name(
    transport: Transport, method: str, priority: str
) -> None:
    rec = Recorder()
    listener = listen(transport, [rec])
    notifier = Notifier(transport, "compute.host1", topics=[TOPIC])
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    ident = uuid.uuid4()
    before = time.time()

    getattr(notifier, method)(
        {"request_id": "req-1"},
        "instance.create.end",
        {
            "instance": ident,
            "launched_at": when,
            "memory_mb": 512,
        },
    )

    seen = rec.next()
    assert seen.method == priority
    assert seen.ctx == {"request_id": "req-1"}
    assert seen.publisher_id == "compute.host1"
    assert seen.event_type == "instance.create.end"
    assert seen.payload == {"instance": ident, "launched_at": when, "memory_mb": 512}
    assert isinstance(seen.payload["instance"], uuid.UUID)
    assert seen.metadata["priority"] == priority
    assert seen.metadata["attempts"] == 1
    assert before <= seen.metadata["timestamp"] <= time.time()
    assert len(bytes.fromhex(seen.metadata["message_id"])) == 16
    assert listener.addresses[0].topic == f"{TOPIC}.audit"
    notifier.close()
    _stop(listener)


def test_every_notification_has_a_unique_message_id_and_a_timestamp(
    transport: Transport,
) -> None:
    rec = Recorder()
    listener = listen(transport, [rec])
    notifier = Notifier(transport, "svc")
    before = time.time()

    for i in range(50):
        notifier.info({}, "tick", {"i": i})

    seen = rec.take(50)
    assert len({s.metadata["message_id"] for s in seen}) == 50
    assert all(before <= s.metadata["timestamp"] <= time.time() for s in seen)
    notifier.close()
    _stop(listener)


def test_two_pools_each_get_every_notification_once(transport: Transport) -> None:
    billing, audit = Recorder(), Recorder()
    listeners = [listen(transport, [billing], pool="billing"), listen(transport, [audit], "audit")]
    notifier = Notifier(transport, "svc")

    for i in range(20):
        notifier.info({}, "instance.exists", {"i": i})

    for rec in (billing, audit):
        assert sorted(s.payload["i"] for s in rec.take(20)) == list(range(20))
    notifier.close()
    _stop(*listeners)
    assert billing.drain() == [] and audit.drain() == []


def test_listeners_in_one_pool_split_the_notifications_without_duplicates(
    make_transport: MakeTransport,
) -> None:
    first, second = Recorder(), Recorder()
    listeners = [
        listen(make_transport(), [first], pool="workers"),
        listen(make_transport(), [second], pool="workers"),
    ]
    notifier = Notifier(make_transport(), "svc")

    for i in range(100):
        notifier.info({}, "job.queued", {"i": i})

    wait_until(lambda: first.calls.qsize() + second.calls.qsize() >= 100, what="100 deliveries")
    notifier.close()
    _stop(*listeners)
    got_first = [s.payload["i"] for s in first.drain()]
    got_second = [s.payload["i"] for s in second.drain()]
    assert sorted(got_first + got_second) == list(range(100))  # none missing, none twice
    assert got_first and got_second  # they competed


def test_filter_by_event_type_picks_the_endpoints_that_see_a_notification(
    transport: Transport,
) -> None:
    class Instances(Recorder):
        filter_rule = NotificationFilter(event_type=r"^instance\.")

    everything, instances = Recorder(), Instances()
    listener = listen(transport, [everything, instances])
    notifier = Notifier(transport, "svc")

    for event_type in ("instance.create.end", "volume.create.end", "myinstance.x"):
        notifier.info({}, event_type, {})

    everything.take(3)
    _stop(listener)  # every in-flight notification is settled
    assert [s.event_type for s in instances.drain()] == ["instance.create.end"]
    notifier.close()


def test_filter_by_publisher(transport: Transport) -> None:
    class Compute(Recorder):
        filter_rule = NotificationFilter(publisher_id=r"^compute\.")

    everything, compute = Recorder(), Compute()
    listener = listen(transport, [everything, compute])
    notifier = Notifier(transport, "compute.host1")

    notifier.info({}, "a", {})
    notifier.prepare(publisher_id="network.host1").info({}, "b", {})

    everything.take(2)
    _stop(listener)
    assert [s.publisher_id for s in compute.drain()] == ["compute.host1"]
    notifier.close()


def test_filter_by_context_and_metadata_keys(transport: Transport) -> None:
    class TenantErrors(Recorder):
        filter_rule = NotificationFilter(
            context={"tenant": "^acme$"}, metadata={"priority": "^error$"}
        )

    everything, picked = Recorder(), TenantErrors()
    listener = listen(transport, [everything, picked])
    notifier = Notifier(transport, "svc")

    notifier.error({"tenant": "acme"}, "wanted", {})
    notifier.info({"tenant": "acme"}, "wrong.priority", {})
    notifier.error({"tenant": "acme-corp"}, "wrong.tenant", {})
    notifier.error({}, "no.tenant", {})

    everything.take(4)
    _stop(listener)
    assert [s.event_type for s in picked.drain()] == ["wanted"]
    assert listener.stats.handled == 4
    notifier.close()


def test_notification_no_endpoint_wants_is_acknowledged(transport: Transport) -> None:
    class Nothing(Recorder):
        filter_rule = NotificationFilter(event_type="^never$")

    listener = listen(transport, [Nothing()])
    notifier = Notifier(transport, "svc")

    notifier.info({}, "something", {})

    wait_until(lambda: listener.stats.filtered == 1, what="the filtered notification")
    _stop(listener)
    assert transport.driver.stats()["ready"] == 0  # type: ignore[attr-defined]
    notifier.close()


def test_requeue_result_redelivers_with_attempts_2(transport: Transport) -> None:
    class OnceMore(Recorder):
        def info(self, *args: Any) -> Any:
            self._record("info", *args)
            return NotificationResult.REQUEUE if args[4]["attempts"] == 1 else None

    rec = OnceMore()
    listener = listen(transport, [rec])
    notifier = Notifier(transport, "svc")

    notifier.info({}, "retry.me", {"n": 1})

    first, second = rec.take(2)
    assert (first.metadata["attempts"], second.metadata["attempts"]) == (1, 2)
    assert first.metadata["message_id"] == second.metadata["message_id"]
    assert second.payload == {"n": 1}
    wait_until(lambda: listener.stats.handled == 1, what="the second delivery acknowledged")
    assert listener.stats.requeued == 1
    notifier.close()
    _stop(listener)


def test_requeue_result_is_acknowledged_when_requeue_is_not_allowed(
    transport: Transport,
) -> None:
    rec = Recorder(result=NotificationResult.REQUEUE)
    listener = listen(transport, [rec], allow_requeue=False)
    notifier = Notifier(transport, "svc")

    notifier.info({}, "no.retry", {})

    assert rec.next().metadata["attempts"] == 1
    _stop(listener)
    assert listener.stats.handled == 1 and listener.stats.requeued == 0
    assert transport.driver.stats()["ready"] == 0  # type: ignore[attr-defined]
    notifier.close()


def test_endpoint_that_always_raises_ends_in_dead_letters_with_the_reason(
    transport: Transport,
) -> None:
    class Broken(Recorder):
        def info(self, *args: Any) -> Any:
            self._record("info", *args)
            raise ValueError("billing database is gone")

    rec = Broken()
    listener = listen(transport, [rec], max_attempts=3)
    notifier = Notifier(transport, "svc")

    notifier.info({}, "instance.exists", {})

    wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
    [dead] = transport.driver.dead_letters()
    assert "ValueError: billing database is gone" in dead.reason
    assert "after 3 attempts" in dead.reason
    assert dead.attempts == 3
    assert [s.metadata["attempts"] for s in rec.take(3)] == [1, 2, 3]
    assert envelope.decode(dead.body).header[envelope.EVENT_TYPE] == "instance.exists"
    notifier.close()
    _stop(listener)
    assert listener.stats.failed == 3 and listener.stats.dead_lettered == 1


def _valid_after(transport: Transport, bad: bytes, reason: str) -> None:
    """``bad`` on the info topic is dead-lettered with ``reason``; a valid one still arrives."""
    rec = Recorder()
    listener = listen(transport, [rec])
    notifier = Notifier(transport, "svc")

    send_raw(transport, bad)
    notifier.info({}, "valid.one", {"ok": True})

    assert rec.next().payload == {"ok": True}
    wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
    [dead] = transport.driver.dead_letters()
    assert dead.body == bad
    assert reason in dead.reason
    assert listener.stats.malformed == 1
    notifier.close()
    _stop(listener)


def test_malformed_bytes_are_dead_lettered_and_valid_ones_after_still_arrive(
    transport: Transport,
) -> None:
    _valid_after(transport, b"\x00 definitely not an envelope", "malformed notification")


def test_an_envelope_of_another_kind_is_dead_lettered(transport: Transport) -> None:
    cast = envelope.encode(
        Serializer(),
        Kind.CAST,
        envelope.new_message_id(),
        {envelope.METHOD: "boot", envelope.VERSION: "1.0", envelope.CONTEXT: {}},
        {},
    )
    _valid_after(transport, cast, "unexpected CAST envelope")


def test_a_notification_missing_header_fields_is_dead_lettered(transport: Transport) -> None:
    partial = envelope.encode(
        Serializer(),
        Kind.NOTIFICATION,
        envelope.new_message_id(),
        {envelope.PRIORITY: "info", envelope.CONTEXT: {}},
        {},
    )
    _valid_after(transport, partial, "lacks header field")


def test_a_notification_with_a_bad_header_value_is_dead_lettered(transport: Transport) -> None:
    bad = envelope.encode(
        Serializer(),
        Kind.NOTIFICATION,
        envelope.new_message_id(),
        {
            envelope.PRIORITY: "info",
            envelope.EVENT_TYPE: 42,
            envelope.PUBLISHER: "svc",
            envelope.CONTEXT: {},
            envelope.SENT_AT: time.time(),
        },
        {},
    )
    _valid_after(transport, bad, "event type")


def test_an_undecodable_payload_is_dead_lettered(transport: Transport) -> None:
    header = {
        envelope.PRIORITY: "info",
        envelope.EVENT_TYPE: "x",
        envelope.PUBLISHER: "svc",
        envelope.CONTEXT: {},
        envelope.SENT_AT: time.time(),
    }
    bad = msgpack.packb(
        [1, int(Kind.NOTIFICATION), envelope.new_message_id(), header, msgpack.ExtType(99, b"?")],
        use_bin_type=True,
    )
    _valid_after(transport, bad, "undecodable payload")


def test_endpoint_methods_run_on_the_listener_pool_not_the_driver_thread(
    transport: Transport,
) -> None:
    names: list[str] = []

    class Where:
        def info(self, *args: Any) -> None:
            names.append(threading.current_thread().name)

    listener = listen(transport, [Where()])
    notifier = Notifier(transport, "svc")
    notifier.info({}, "x", {})
    wait_until(lambda: bool(names), what="the call")
    assert names[0].startswith("rpclib-notify")
    notifier.close()
    _stop(listener)


def test_stop_then_wait_finishes_in_flight_work(transport: Transport) -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def info(self, *args: Any) -> None:
            entered.set()
            assert release.wait(WAIT)

    listener = listen(transport, [Slow()])
    notifier = Notifier(transport, "svc")
    notifier.info({}, "slow", {})
    assert entered.wait(WAIT)
    listener.stop()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(listener.wait(WAIT)))
    waiter.start()

    waiter.join(0.1)
    assert waiter.is_alive()  # wait() holds on while the handler runs
    release.set()
    waiter.join(WAIT)

    assert results == [True]
    assert listener.stats.handled == 1
    assert transport.driver.stats()["ready"] == 0  # type: ignore[attr-defined]
    notifier.close()


def test_context_manager_starts_and_stops(transport: Transport) -> None:
    rec = Recorder()
    notifier = Notifier(transport, "svc")
    with NotificationListener(transport, [Target(topic=TOPIC)], [rec]) as listener:
        assert listener.running
        notifier.info({}, "x", {})
        rec.next()
    assert listener.wait(0)  # __exit__ stopped it and waited: nothing left to wait for
    notifier.close()


def test_only_priorities_some_endpoint_implements_are_subscribed(transport: Transport) -> None:
    class Errors:
        def error(self, *args: Any) -> None: ...

    class Samples:
        def sample(self, *args: Any) -> None: ...

    listener = NotificationListener(
        transport, [Target(topic="a"), Target(exchange="other", topic="b")], [Errors(), Samples()]
    )
    assert [(a.exchange, a.topic) for a in listener.addresses] == [
        ("rpclib", "a.error"),
        ("rpclib", "a.sample"),
        ("other", "b.error"),
        ("other", "b.sample"),
    ]


def test_bad_listener_configuration_is_refused(transport: Transport) -> None:
    class NoPriorities:
        def create(self) -> None: ...

    with pytest.raises(ValueError, match="implements no notification priority"):
        NotificationListener(transport, [Target(topic=TOPIC)], [NoPriorities()])
    with pytest.raises(ValueError, match="topic"):
        NotificationListener(transport, [Target(topic=TOPIC, server="h1")], [Recorder()])
    with pytest.raises(ValueError, match="regular expression"):
        NotificationFilter(event_type="(")
