"""A listener of this rpclib meets a notification from a newer one: kept, with the reason."""

from __future__ import annotations

import msgpack

from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.transport import Transport
from tests.notifications.helpers import WAIT, Recorder, listen, send_raw, wait_until


def test_a_newer_envelope_notification_is_dead_lettered_naming_both_versions(
    transport: Transport,
) -> None:
    rec = Recorder()
    listener = listen(transport, [rec])
    header = {
        envelope.PRIORITY: "info",
        envelope.EVENT_TYPE: "instance.create.end",
        envelope.PUBLISHER: "compute.host1",
        envelope.CONTEXT: {},
        envelope.SENT_AT: 1.0,
        "trace": "a v2-only key",
    }
    newer = [2, int(Kind.NOTIFICATION), b"n" * 16, header, "a v2-only item", {"id": 1}]
    try:
        send_raw(transport, msgpack.packb(newer))

        wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
        [dead] = transport.driver.dead_letters()
        assert "envelope version 2 is not supported" in dead.reason
        assert "up to 1" in dead.reason
        assert rec.drain() == []
    finally:
        listener.stop()
        listener.wait(WAIT)
