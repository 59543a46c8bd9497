"""Upgrading rpclib itself, on every transport: a newer envelope gets an answer at once.

A sender one envelope version ahead (modelled by :class:`NewerClient`, which
writes version 2 with an item and header keys version 1 does not know after
the prefix every version keeps) meets a server of this version. Its call must
fail at once with UnsupportedEnvelope naming both versions, not wait out its
timeout as if the server were dead; its at-least-once cast must reach its
``on_cast_error`` (and stay dead-lettered, to replay after the upgrade).
The other way round, a reply in a newer version fails its call at once.

Mixed into :class:`~tests.transports.driver_contract.DriverContract`: it uses
that class's ``make_driver`` and ``address_factory`` fixtures.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import msgpack
import pytest

import rpclib
from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.transport import Transport
from rpclib.transports.base import Driver, Incoming


class NewerClient(rpclib.RPCClient):
    """An RPCClient writing envelope version 2: the prefix, then what version 1 lacks."""

    def _encode(
        self, kind: Kind, message_id: bytes, header: dict[str, Any], kwargs: dict[str, Any]
    ) -> bytes:
        newer_header = {**header, "trace": {"span": "abc"}, "prio": 3}
        data: bytes = msgpack.packb(
            [2, int(kind), message_id, newer_header, ["a v2-only item"], kwargs, {"more": 1}],
            use_bin_type=True,
        )
        return data


class Echo:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        self.calls.append(value)
        return value


class EnvelopeUpgradeContract:
    """What a server of this version does with envelopes of the next one."""

    wait: ClassVar[float]
    supports_dead_letter_inspection: ClassVar[bool]
    dead_letter_scan_limit: ClassVar[int]
    wait_for: Callable[..., None]

    @pytest.fixture
    def older_server(
        self, make_driver: Callable[[], Driver], address_factory: Any
    ) -> Iterator[tuple[rpclib.Target, Echo, rpclib.RPCServer, Transport]]:
        """A server of this version, and a second process's transport to send from."""
        target = rpclib.Target(
            exchange=address_factory.exchange, topic=address_factory.unique("topic")
        )
        server_transport = Transport(make_driver())
        sender = Transport(make_driver())
        echo = Echo()
        server = rpclib.RPCServer(server_transport, target(server="old"), [echo])
        server.start()
        yield target, echo, server, sender
        server.stop()
        server.wait(self.wait)
        sender.close()
        server_transport.close()

    def test_a_newer_envelope_call_is_answered_at_once_naming_both_versions(
        self, older_server: tuple[rpclib.Target, Echo, rpclib.RPCServer, Transport]
    ) -> None:
        target, echo, _server, sender = older_server
        # The call may wait as long as the contract waits for anything: only an answer ends
        # it before that (a dead-lettered call would end in ReplyTimeout instead).
        newer = NewerClient(sender, target, timeout=self.wait)

        with pytest.raises(rpclib.UnsupportedEnvelope) as caught:
            newer.call({}, "echo", value="hello")

        assert (caught.value.version, caught.value.supported) == (2, 1)
        assert "envelope version 2" in str(caught.value) and "up to 1" in str(caught.value)
        assert echo.calls == []
        current = rpclib.RPCClient(sender, target, timeout=self.wait)
        assert current.call({}, "echo", value="still serving") == "still serving"

    def test_a_newer_envelope_cast_is_reported_to_on_cast_error_and_dead_lettered(
        self, older_server: tuple[rpclib.Target, Echo, rpclib.RPCServer, Transport]
    ) -> None:
        target, echo, server, sender = older_server
        failures: queue.Queue[rpclib.CastFailure] = queue.Queue()
        newer = NewerClient(sender, target, at_least_once=True, on_cast_error=failures.put)

        newer.cast({}, "echo", value="hello")

        try:
            failure = failures.get(timeout=self.wait)
        except queue.Empty:
            pytest.fail(f"on_cast_error was not called within {self.wait}s")
        assert failure.method == "echo"
        assert isinstance(failure.error, rpclib.UnsupportedEnvelope)
        assert "envelope version 2" in str(failure.error)
        assert echo.calls == []
        assert server.stats.dead_lettered == 1
        if self.supports_dead_letter_inspection:
            self.wait_for(
                lambda: any(
                    "envelope version 2" in letter.reason
                    for letter in sender.driver.dead_letters(self.dead_letter_scan_limit)
                ),
                "the cast's dead letter naming the envelope version",
            )

    def test_a_reply_in_a_newer_envelope_fails_its_call_at_once(
        self, make_driver: Callable[[], Driver], address_factory: Any
    ) -> None:
        server_driver = make_driver()
        caller = Transport(make_driver())
        topic = address_factory()

        def newer_server(incoming: Incoming) -> None:
            """Answers every call in envelope version 2 (a server upgraded before its callers)."""
            incoming.ack()
            call = envelope.decode(incoming.body)
            reply = [2, int(Kind.REPLY), call.message_id, {"new": True}, "v2 only", "result"]
            server_driver.send_to_inbox(call.header[envelope.REPLY_TO], msgpack.packb(reply))

        subscription = server_driver.listen(topic, newer_server)
        client = rpclib.RPCClient(
            caller, rpclib.Target(exchange=topic.exchange, topic=topic.topic), timeout=self.wait
        )
        try:
            with pytest.raises(rpclib.UnsupportedEnvelope, match="envelope version 2"):
                client.call({}, "echo", value="hello")
        finally:
            subscription.close()
            caller.close()
