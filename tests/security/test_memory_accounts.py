"""memory:// buses with accounts authenticate drivers and stamp every message's sender."""

from __future__ import annotations

import queue
from collections.abc import Callable

import pytest

import rpclib
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.memory import add_account, remove_account


def received_sender(sender: rpclib.Transport, receiver: rpclib.Transport) -> str | None:
    got: queue.Queue[Incoming] = queue.Queue()
    address = Address("rpclib", "who")
    sub = receiver.driver.listen(address, got.put)
    try:
        sender.driver.send(address, b"hello", guarantee=Guarantee.AT_MOST_ONCE)
        incoming = got.get(timeout=10)
        incoming.ack()
        return incoming.sender
    finally:
        sub.close()


def test_every_message_carries_the_account_that_sent_it(
    as_principal: Callable[[str], rpclib.Transport],
) -> None:
    conductor = as_principal("conductor")
    assert received_sender(as_principal("compute-1"), conductor) == "compute-1"
    assert received_sender(as_principal("scheduler"), conductor) == "scheduler"


def test_a_bus_without_accounts_has_no_senders(bus_url: str) -> None:
    a, b = rpclib.get_transport(bus_url), rpclib.get_transport(bus_url)
    try:
        assert received_sender(a, b) is None
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("credentials", "problem"),
    [
        ("compute-1:wrong@", "refused user 'compute-1': unknown user or wrong password"),
        ("nobody:nobodynobody@", "refused user 'nobody'"),
        ("", "requires authentication"),
    ],
)
def test_a_driver_that_cannot_log_in_is_refused(
    secure_bus: str, credentials: str, problem: str
) -> None:
    with pytest.raises(rpclib.TransportError, match=problem):
        rpclib.get_transport(f"memory://{credentials}{secure_bus}")


def test_credentials_for_a_bus_without_accounts_are_an_error(bus_url: str) -> None:
    with pytest.raises(rpclib.TransportError, match="has no accounts"):
        rpclib.get_transport(bus_url.replace("memory://", "memory://a:b@"))


def test_a_removed_account_can_no_longer_log_in(secure_bus: str) -> None:
    remove_account(secure_bus, "compute-2")
    with pytest.raises(rpclib.TransportError, match="refused user 'compute-2'"):
        rpclib.get_transport(f"memory://compute-2:compute-2compute-2@{secure_bus}")


def test_a_changed_password_takes_effect_for_new_drivers(secure_bus: str) -> None:
    add_account(secure_bus, "compute-1", "rotated")
    rpclib.get_transport(f"memory://compute-1:rotated@{secure_bus}").close()
    with pytest.raises(rpclib.TransportError, match="wrong password"):
        rpclib.get_transport(f"memory://compute-1:compute-1compute-1@{secure_bus}")
