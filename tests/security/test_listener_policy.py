"""A notification listener given a policy counts only what allowed senders may emit."""

from __future__ import annotations

from collections.abc import Callable

import rpclib
from tests.notifications.helpers import TOPIC, Recorder, wait_until

POLICY = rpclib.Policy([rpclib.Allow("conductor", events=["instance.*"])])


def billing(transport: rpclib.Transport, endpoint: Recorder) -> rpclib.NotificationListener:
    listener = rpclib.NotificationListener(
        transport, [rpclib.Target(topic=TOPIC)], [endpoint], "billing", policy=POLICY
    )
    listener.start()
    return listener


def emit(transport: rpclib.Transport, event_type: str) -> None:
    notifier = rpclib.Notifier(transport, "whoever", topics=[TOPIC], ensure_pools=["billing"])
    notifier.info({}, event_type, {"vcpus": 720_000})
    notifier.close()


def test_allowed_senders_reach_the_endpoint_with_their_principal(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    endpoint = Recorder()
    listener = billing(as_principal("cli"), endpoint)
    try:
        emit(as_principal("conductor"), "instance.create.end")
        seen = endpoint.next()
        assert seen.event_type == "instance.create.end"
        assert seen.metadata["sender"] == "conductor"
    finally:
        listener.stop()
        listener.wait()


def test_a_forged_notification_is_dead_lettered_and_never_counted(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    endpoint = Recorder()
    watcher = as_principal("cli")
    listener = billing(watcher, endpoint)
    try:
        emit(as_principal("compute-1"), "instance.create.end")
        wait_until(lambda: len(watcher.driver.dead_letters()) == 1, what="the dead letter")
        assert listener.stats.forbidden == 1
        (dead,) = watcher.driver.dead_letters()
        assert "'compute-1' may not send instance.create.end" in dead.reason
        emit(as_principal("conductor"), "instance.exists")
        assert endpoint.next().metadata["sender"] == "conductor"
        assert endpoint.drain() == []
    finally:
        listener.stop()
        listener.wait()


def test_event_types_outside_the_rules_are_refused_even_from_allowed_senders(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    endpoint = Recorder()
    listener = billing(as_principal("cli"), endpoint)
    try:
        emit(as_principal("conductor"), "billing.adjust")
        wait_until(lambda: listener.stats.forbidden == 1, what="the refusal")
        assert endpoint.drain() == []
    finally:
        listener.stop()
        listener.wait()
