"""A listener endpoint can declare a notification hopeless: dead-lettered at once."""

from __future__ import annotations

from typing import Any

import rpclib
from tests.rpc.helpers import wait_until


def test_permanent_error_in_an_endpoint_is_not_retried(transport: rpclib.Transport) -> None:
    class Strict:
        def info(
            self, ctx: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
        ) -> None:
            raise rpclib.PermanentError("payload can never be billed")

    listener = rpclib.NotificationListener(
        transport, [rpclib.Target(topic="notifications")], [Strict()], max_attempts=5
    )
    listener.start()
    try:
        notifier = rpclib.Notifier(transport, publisher_id="p")
        notifier.info({}, "instance.exists", {"x": 1})
        assert notifier.flush(10)
        wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
        (letter,) = transport.driver.dead_letters()
        assert letter.attempts == 1 and "permanent error, not retried" in letter.reason
        assert listener.stats.requeued == 0
    finally:
        listener.stop()
        listener.wait(10)
