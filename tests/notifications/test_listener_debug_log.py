"""At DEBUG, a listener writes one line per handled notification, saying what happened."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import pytest

import rpclib
from rpclib.listener import NotificationListener
from rpclib.notifier import Notifier
from tests.notifications.helpers import WAIT, Recorder, wait_until
from tests.rpc.on_transports import any_transport, any_url

__all__ = ["any_transport", "any_url"]


class Failing(Recorder):
    def error(self, *args: Any) -> Any:
        raise ValueError("disk full")


def test_each_handled_notification_gets_one_line_with_its_outcome_and_request_id(
    any_transport: rpclib.Transport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpclib.listener")
    exchange = f"n{uuid.uuid4().hex[:10]}"
    endpoint = Failing()
    listener = NotificationListener(
        any_transport,
        [rpclib.Target(exchange=exchange, topic="notifications")],
        [endpoint],
        max_attempts=1,
    )
    listener.start()
    notifier = Notifier(any_transport, "compute.host1", exchange=exchange)
    try:
        notifier.info({"request_id": "req-9"}, "instance.create.end", {"id": 1})
        notifier.error({"request_id": "req-10"}, "instance.create.error", {"id": 2})
        assert endpoint.next().event_type == "instance.create.end"

        def handled() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "rpclib.listener" and r.getMessage().startswith("handled")
            ]

        wait_until(lambda: len(handled()) == 2, what="two handled lines")
        ok, failed = sorted(handled(), key=lambda line: "error" in line)
        assert re.fullmatch(
            r"handled notification instance\.create\.end [0-9a-f]{32} from compute\.host1 at "
            r"info: ack in [0-9.]+ ms \(request_id=req-9\)",
            ok,
        ), ok
        assert "instance.create.error" in failed and "at error: dead_letter" in failed
        assert "error raised ValueError: disk full" in failed and "(request_id=req-10)" in failed
    finally:
        notifier.close()
        listener.stop()
        listener.wait(WAIT)
