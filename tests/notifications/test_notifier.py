"""The Notifier and its drivers: wire format, buffering, delivery accounting, routing."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

import pytest

from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.exceptions import SerializationError
from rpclib.notifier import Notifier
from rpclib.notify_drivers import (
    LogDriver,
    MessagingDriver,
    NoopDriver,
    NotifierStats,
    RoutingDriver,
    render_payload,
)
from rpclib.serializer import Serializer
from rpclib.transport import Transport
from rpclib.transports.base import Address, Incoming
from tests.notifications.helpers import (
    TOPIC,
    WAIT,
    FlakyDriver,
    GatedDriver,
    Recorder,
    RecordingDriver,
    declare,
    listen,
    wait_until,
)

MakeTransport = Callable[[], Transport]


def test_wire_is_one_notification_envelope_on_topic_dot_priority(transport: Transport) -> None:
    got: queue.Queue[Incoming] = queue.Queue()
    address = Address(transport.default_exchange, f"{TOPIC}.error")
    sub = transport.driver.listen(address, got.put, group="raw")
    notifier = Notifier(transport, "compute.host1", topics=[TOPIC])
    before = time.time()

    notifier.error({"user": "alice", "roles": ["admin"]}, "instance.delete.error", {"id": 7})

    incoming = got.get(timeout=WAIT)
    incoming.ack()
    env = envelope.decode(incoming.body)
    assert env.kind is Kind.NOTIFICATION
    assert len(env.message_id) == 16
    assert env.header[envelope.PRIORITY] == "error"
    assert env.header[envelope.EVENT_TYPE] == "instance.delete.error"
    assert env.header[envelope.PUBLISHER] == "compute.host1"
    assert env.header[envelope.CONTEXT] == {"user": "alice", "roles": ["admin"]}
    assert before <= env.header[envelope.SENT_AT] <= time.time()
    assert env.body(Serializer()) == {"id": 7}
    assert notifier.flush(WAIT)
    assert notifier.stats.sent == 1
    sub.close()
    notifier.close()


def test_every_topic_gets_the_same_notification(transport: Transport) -> None:
    got: queue.Queue[Incoming] = queue.Queue()
    subs = [
        transport.driver.listen(Address(transport.default_exchange, f"{t}.info"), got.put)
        for t in ("a", "b")
    ]
    notifier = Notifier(transport, "svc", topics=["a", "b"])

    notifier.info({}, "thing.happened", None)

    ids = set()
    for _ in range(2):
        incoming = got.get(timeout=WAIT)
        incoming.ack()
        ids.add(envelope.decode(incoming.body).message_id)
    assert len(ids) == 1
    for sub in subs:
        sub.close()
    notifier.close()


def test_ctx_with_rich_values_raises_on_the_callers_thread(transport: Transport) -> None:
    notifier = Notifier(transport, "svc")
    with pytest.raises(SerializationError, match="ctx"):
        notifier.info({"when": object()}, "thing.happened", {})
    notifier.close()


def test_unknown_priority_and_empty_event_type_are_refused(transport: Transport) -> None:
    notifier = Notifier(transport, "svc", driver="noop")
    with pytest.raises(ValueError, match="priority"):
        notifier.notify("loud", {}, "x", {})
    with pytest.raises(ValueError, match="event_type"):
        notifier.info({}, "", {})


def test_prepare_overrides_publisher_and_shares_the_buffer(transport: Transport) -> None:
    rec = Recorder()
    listener = listen(transport, [rec])
    notifier = Notifier(transport, "compute.host1")
    other = notifier.prepare(publisher_id="compute.host2")

    other.info({}, "instance.create.end", {})

    assert rec.next().publisher_id == "compute.host2"
    assert other.flush(WAIT)
    assert notifier.stats.sent == 1  # same driver, same counters
    assert notifier.publisher_id == "compute.host1"
    notifier.close()
    listener.stop()
    listener.wait(WAIT)


def test_full_buffer_drops_and_counts_without_blocking(
    bus_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    driver = GatedDriver(bus_url)
    transport = Transport(driver)
    declare(transport)
    notifier = Notifier(transport, "svc", buffer_size=2)
    notifier.info({}, "first", {})
    assert driver.entered.wait(WAIT)  # the sender is now stuck in send()

    with caplog.at_level(logging.WARNING, logger="rpclib.notifier"):
        for i in range(5):
            notifier.info({}, f"more.{i}", {})  # returns although the transport is stuck

    assert not driver.gate.is_set()
    assert notifier.stats.dropped == 4  # one buffer slot held the first, one took more.0
    drop_lines = [r for r in caplog.records if "dropping notification" in r.getMessage()]
    assert len(drop_lines) == 1  # repeated drops are rate-limited
    assert "buffer of 2 is full" in drop_lines[0].getMessage()
    driver.gate.set()
    assert notifier.flush(WAIT)
    assert notifier.stats.sent == 2
    notifier.close()
    transport.close()


def test_flush_waits_until_everything_buffered_was_sent(bus_url: str) -> None:
    driver = GatedDriver(bus_url)
    transport = Transport(driver)
    declare(transport)
    notifier = Notifier(transport, "svc")
    notifier.info({}, "a", {})
    notifier.info({}, "b", {})
    assert driver.entered.wait(WAIT)

    assert notifier.flush(0.05) is False  # still stuck in the transport
    driver.gate.set()
    assert notifier.flush(WAIT) is True
    assert notifier.stats.sent == 2
    notifier.close()
    transport.close()


def test_undeliverable_is_counted_and_logged_as_error(
    transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(transport, "svc", topics=["nobody-listens"])
    with caplog.at_level(logging.ERROR, logger="rpclib.notifier"):
        notifier.info({}, "lost.event", {})
        assert notifier.flush(WAIT)

    assert notifier.stats.undeliverable == 1
    assert notifier.stats.sent == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "undeliverable" in r.getMessage() and "nobody-listens.info" in r.getMessage()
        for r in errors
    )
    notifier.close()


def test_transport_errors_are_retried_until_sent(bus_url: str) -> None:
    driver = FlakyDriver(bus_url, failures=3)
    transport = Transport(driver)
    rec = Recorder()
    listener = listen(transport, [rec])
    notifier = Notifier(transport, "svc", driver=MessagingDriver(transport, retry_backoff=0.01))

    notifier.info({}, "eventually.delivered", {"n": 1})

    assert rec.next().payload == {"n": 1}
    assert notifier.flush(WAIT)
    assert driver.attempts == 4
    assert notifier.stats.sent == 1
    assert notifier.stats.failed == 0
    notifier.close()
    listener.stop()
    listener.wait(WAIT)
    transport.close()


def test_retry_limit_counts_a_failed_notification(bus_url: str) -> None:
    driver = FlakyDriver(bus_url, failures=100)
    transport = Transport(driver)
    declare(transport)
    notifier = Notifier(
        transport, "svc", driver=MessagingDriver(transport, retry=2, retry_backoff=0.01)
    )

    notifier.info({}, "never.delivered", {})

    assert notifier.flush(WAIT)
    assert driver.attempts == 3
    assert notifier.stats.failed == 1
    notifier.close()
    transport.close()


def test_ensure_pools_keeps_messages_for_a_pool_that_starts_later(transport: Transport) -> None:
    notifier = Notifier(transport, "svc", ensure_pools=("billing",))
    notifier.info({}, "instance.create.end", {"flavor": "m1.small"})
    assert notifier.flush(WAIT)
    assert notifier.stats.sent == 1

    rec = Recorder()
    listener = listen(transport, [rec], pool="billing")

    assert rec.next().payload == {"flavor": "m1.small"}
    notifier.close()
    listener.stop()
    listener.wait(WAIT)


def test_close_sends_what_is_buffered_and_drops_later_notifications(
    transport: Transport,
) -> None:
    declare(transport)
    notifier = Notifier(transport, "svc")
    notifier.info({}, "before.close", {})
    notifier.close()
    assert notifier.stats.sent == 1

    notifier.info({}, "after.close", {})  # does not raise, does not hang

    assert notifier.stats.dropped == 1


def test_close_gives_up_on_a_failing_transport_and_counts_the_rest_as_dropped(
    bus_url: str,
) -> None:
    driver = FlakyDriver(bus_url, failures=10**9)
    transport = Transport(driver)
    notifier = Notifier(
        transport, "svc", driver=MessagingDriver(transport, retry_backoff=0.01, max_backoff=0.05)
    )
    notifier.info({}, "stuck", {})
    notifier.info({}, "behind.it", {})
    wait_until(lambda: driver.attempts >= 2, what="a retry")

    notifier.close(timeout=0.1)

    assert notifier.stats.dropped == 2
    assert notifier.stats.sent == 0
    transport.close()


def test_log_driver_writes_a_line_at_the_priority_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier(None, "compute.host1", driver="log")
    with caplog.at_level(logging.DEBUG, logger="rpclib.notification"):
        notifier.warn({"token": "secret"}, "instance.resize.slow", {"id": 3, "took": 12.5})

    [record] = [r for r in caplog.records if r.name.startswith("rpclib.notification")]
    assert record.name == "rpclib.notification.instance.resize.slow"
    assert record.levelno == logging.WARNING
    line = record.getMessage()
    assert "compute.host1" in line and '{"id":3,"took":12.5}' in line
    assert "secret" not in line  # ctx may carry credentials: never logged
    assert notifier.stats.sent == 1


def test_log_rendering_is_compact_and_handles_rich_values() -> None:
    import datetime
    import uuid

    when = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=1)
    text = render_payload({"at": when, "id": ident, "tags": ("a",)}, max_chars=4096)
    assert text == (
        '{"at":"2024-05-01T12:00:00+00:00","id":"00000000-0000-0000-0000-000000000001",'
        '"tags":["a"]}'
    )
    assert render_payload("x" * 50, max_chars=10).endswith("...(+42 chars)")


def test_noop_driver_sends_nothing(transport: Transport) -> None:
    declare(transport)
    notifier = Notifier(transport, "svc", driver="noop")

    notifier.info({}, "ignored", {})

    assert not notifier.is_enabled()
    assert notifier.flush(WAIT)
    assert notifier.stats == NotifierStats()
    assert transport.driver.stats()["ready"] == 0  # type: ignore[attr-defined]


def test_driver_list_mixes_names_and_instances(transport: Transport) -> None:
    mine = RecordingDriver()
    notifier = Notifier(None, "svc", driver=["noop", mine], topics=["t1"])

    notifier.sample({}, "cpu.util", 0.5)

    [(notification, topics)] = mine.got
    assert notification.priority == "sample" and notification.payload == 0.5
    assert topics == ("t1",)
    assert notifier.is_enabled()


def test_routing_picks_drivers_by_event_type_and_priority() -> None:
    billing, alerts, everything = RecordingDriver(), RecordingDriver(), RecordingDriver()
    router = RoutingDriver(
        {
            "billing": {"event_types": ["instance.*"], "priorities": ["info"]},
            "alerts": {"priorities": ["error", "critical"]},
            "everything": {},
        },
        {"billing": billing, "alerts": alerts, "everything": everything},
    )
    notifier = Notifier(None, "svc", driver=router)

    notifier.info({}, "instance.create.end", {})
    notifier.info({}, "volume.create.end", {})
    notifier.error({}, "instance.create.error", {})
    notifier.critical({}, "host.down", {})

    assert billing.event_types == ["instance.create.end"]
    assert alerts.event_types == ["instance.create.error", "host.down"]
    assert len(everything.got) == 4


def test_routing_by_name_builds_messaging_and_log_drivers(
    transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    listener = listen(transport, [rec])
    notifier = Notifier(
        transport,
        "svc",
        driver="routing",
        routing=[
            {"driver": "messaging", "event_types": ["instance.*"]},
            {"driver": "log", "priorities": ["warning"]},
        ],
    )
    with caplog.at_level(logging.INFO, logger="rpclib.notification"):
        notifier.info({}, "instance.create.end", {})
        notifier.warn({}, "disk.slow", {})

    assert rec.next().event_type == "instance.create.end"
    assert notifier.flush(WAIT)
    assert notifier.stats.sent == 2  # one message, one log line
    assert [r.name for r in caplog.records if r.name.startswith("rpclib.notification.")] == [
        "rpclib.notification.disk.slow"
    ]
    listener.stop()
    listener.wait(WAIT)
    notifier.close()


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"messaging": {"events": ["x"]}}, "unknown key"),
        ({"messaging": {"priorities": ["loud"]}}, "priority"),
        ({"messaging": {"event_types": "instance.*"}}, "list of strings"),
        ([{"event_types": ["x"]}], "'driver'"),
        ({"routing": {}}, "routing"),
        ({"carrier-pigeon": {}}, "unknown notification driver"),
    ],
)
def test_bad_routing_config_is_refused_naming_the_problem(
    transport: Transport, config: Any, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        Notifier(transport, "svc", driver="routing", routing=config)


def test_a_failing_driver_does_not_keep_the_notification_from_the_others() -> None:
    class Broken(RecordingDriver):
        def notify(self, notification: Any, topics: Any) -> None:
            raise RuntimeError("sink is broken")

    after = RecordingDriver()
    notifier = Notifier(None, "svc", driver=[Broken(), after])

    with pytest.raises(RuntimeError, match="sink is broken"):
        notifier.info({}, "x", {})
    assert after.event_types == ["x"]


def test_unknown_driver_name_and_missing_transport_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown notification driver"):
        Notifier(None, "svc", driver="carrier-pigeon")
    with pytest.raises(ValueError, match="needs a transport"):
        Notifier(None, "svc", driver="messaging")
    assert isinstance(Notifier(None, "svc", driver="noop").drivers[0], NoopDriver)
    assert isinstance(Notifier(None, "svc", driver="log").drivers[0], LogDriver)
