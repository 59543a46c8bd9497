"""BatchNotificationListener: batches by size and by time, settled by the batch's outcome."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from rpclib.listener import BatchNotificationListener, NotificationFilter, NotificationResult
from rpclib.notifier import Notifier
from rpclib.target import Target
from rpclib.transport import Transport
from tests.notifications.helpers import TOPIC, WAIT, wait_until


class Batches:
    """Records every batch its ``info`` method gets."""

    def __init__(self, result: Any = None) -> None:
        self.batches: queue.Queue[list[dict[str, Any]]] = queue.Queue()
        self.result = result

    def info(self, notifications: list[dict[str, Any]]) -> Any:
        self.batches.put(notifications)
        return self.result

    def next(self) -> list[dict[str, Any]]:
        return self.batches.get(timeout=WAIT)


def _batch_listener(
    transport: Transport, endpoints: list[object], **kwargs: Any
) -> BatchNotificationListener:
    listener = BatchNotificationListener(transport, [Target(topic=TOPIC)], endpoints, **kwargs)
    listener.start()
    return listener


def _stop(listener: BatchNotificationListener) -> None:
    listener.stop()
    assert listener.wait(WAIT)


def test_a_full_batch_is_delivered_at_once(transport: Transport) -> None:
    rec = Batches()
    listener = _batch_listener(transport, [rec], batch_size=5, batch_timeout=None)
    notifier = Notifier(transport, "compute.host1")

    for i in range(10):
        notifier.info({"r": i}, "instance.exists", {"i": i})

    first, second = rec.next(), rec.next()
    assert (len(first), len(second)) == (5, 5)
    assert sorted(n["payload"]["i"] for n in first + second) == list(range(10))
    one = first[0]
    assert set(one) == {"ctx", "publisher_id", "event_type", "payload", "metadata"}
    assert one["publisher_id"] == "compute.host1" and one["event_type"] == "instance.exists"
    assert one["ctx"] == {"r": one["payload"]["i"]}
    assert one["metadata"]["priority"] == "info" and one["metadata"]["attempts"] == 1
    notifier.close()
    _stop(listener)
    assert listener.stats.handled == 10


def test_a_partial_batch_is_delivered_when_its_timeout_passes(transport: Transport) -> None:
    rec = Batches()
    listener = _batch_listener(transport, [rec], batch_size=100, batch_timeout=0.1)
    notifier = Notifier(transport, "svc")

    for i in range(3):
        notifier.info({}, "tick", {"i": i})

    got: list[dict[str, Any]] = []
    while len(got) < 3:  # normally one batch; the timer may split it under load
        batch = rec.next()
        assert 0 < len(batch) < 100
        got += batch
    assert sorted(n["payload"]["i"] for n in got) == [0, 1, 2]
    notifier.close()
    _stop(listener)


def test_stop_delivers_the_partial_batch(transport: Transport) -> None:
    rec = Batches()
    listener = _batch_listener(transport, [rec], batch_size=100, batch_timeout=None)
    notifier = Notifier(transport, "svc")
    for i in range(3):
        notifier.info({}, "tick", {"i": i})
    assert notifier.flush(WAIT)
    wait_until(lambda: listener.pending == 3, what="3 notifications waiting for their batch")

    _stop(listener)

    assert sorted(n["payload"]["i"] for n in rec.next()) == [0, 1, 2]
    assert transport.driver.stats()["ready"] == 0  # type: ignore[attr-defined]
    notifier.close()


def test_a_failing_batch_is_requeued_whole(transport: Transport) -> None:
    class FailsOnce(Batches):
        def info(self, notifications: list[dict[str, Any]]) -> Any:
            self.batches.put(notifications)
            if notifications[0]["metadata"]["attempts"] == 1:
                raise RuntimeError("warehouse offline")
            return None

    rec = FailsOnce()
    listener = _batch_listener(transport, [rec], batch_size=4, batch_timeout=None)
    notifier = Notifier(transport, "svc")

    for i in range(4):
        notifier.info({}, "usage", {"i": i})

    failed, retried = rec.next(), rec.next()
    assert sorted(n["payload"]["i"] for n in failed) == [0, 1, 2, 3]
    assert sorted(n["payload"]["i"] for n in retried) == [0, 1, 2, 3]
    assert {n["metadata"]["attempts"] for n in retried} == {2}
    wait_until(lambda: listener.stats.handled == 4, what="the retried batch acknowledged")
    assert listener.stats.requeued == 4
    notifier.close()
    _stop(listener)


def test_a_batch_that_keeps_failing_is_dead_lettered(transport: Transport) -> None:
    rec = Batches(result=NotificationResult.REQUEUE)
    listener = _batch_listener(transport, [rec], batch_size=2, batch_timeout=None, max_attempts=2)
    notifier = Notifier(transport, "svc")

    notifier.info({}, "a", {})
    notifier.info({}, "b", {})

    wait_until(lambda: len(transport.driver.dead_letters()) == 2, what="two dead letters")
    assert all("asked to requeue" in d.reason for d in transport.driver.dead_letters())
    notifier.close()
    _stop(listener)


def test_filters_pick_what_each_endpoint_gets_in_a_batch(transport: Transport) -> None:
    class Instances(Batches):
        filter_rule = NotificationFilter(event_type=r"^instance\.")

    everything, instances = Batches(), Instances()
    listener = _batch_listener(transport, [everything, instances], batch_size=3, batch_timeout=None)
    notifier = Notifier(transport, "svc")

    for event_type in ("instance.a", "volume.b", "instance.c"):
        notifier.info({}, event_type, {})

    assert len(everything.next()) == 3
    _stop(listener)
    assert sorted(n["event_type"] for n in instances.next()) == ["instance.a", "instance.c"]
    notifier.close()


def test_prefetch_below_batch_size_is_refused(transport: Transport) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        BatchNotificationListener(
            transport, [Target(topic=TOPIC)], [Batches()], batch_size=10, prefetch=5
        )
