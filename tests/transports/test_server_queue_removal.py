"""Driver.remove_server_queues: an operator removes a retired server's queue (memory://, rabbit://)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from rpclib.exceptions import AccessRefused, TransportError
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Driver, Guarantee
from tests.support.rabbit import BROKER, rabbitmqctl

MakeDriver = Callable[[], Driver]


@pytest.fixture(params=["memory", "rabbit"])
def make_driver(request: pytest.FixtureRequest) -> Iterator[MakeDriver]:
    if request.param == "memory":
        url = request.getfixturevalue("bus_url")
    else:
        url = request.getfixturevalue("rabbit_url")
    drivers: list[Driver] = []

    def make() -> Driver:
        drivers.append(driver := load_driver(url))
        return driver

    yield make
    for driver in drivers:
        driver.close()


def server_address() -> Address:
    return Address(f"retire-{uuid.uuid4().hex[:8]}", "compute", server="node9")


def test_a_retired_servers_queue_and_its_messages_are_removed(make_driver: MakeDriver) -> None:
    driver = make_driver()
    address = server_address()
    driver.declare(address)
    driver.send(address, b"a build nobody will run", guarantee=Guarantee.AT_LEAST_ONCE)

    removed = driver.remove_server_queues(address)

    assert len(removed) == 1 and "node9" in removed[0]
    assert driver.remove_server_queues(address) == []  # nothing left


def test_a_queue_a_server_listens_on_is_not_removed(make_driver: MakeDriver) -> None:
    server, operator = make_driver(), make_driver()
    address = server_address()
    subscription = server.listen(address, lambda message: message.ack())
    try:
        with pytest.raises(TransportError, match="in use"):
            operator.remove_server_queues(address)
    finally:
        subscription.close()


def test_only_server_addresses_are_taken(make_driver: MakeDriver) -> None:
    with pytest.raises(ValueError, match="not a server address"):
        make_driver().remove_server_queues(Address("retire", "compute"))


def test_an_account_that_may_not_delete_the_queue_is_refused(rabbit_url: str) -> None:
    user = f"weak{uuid.uuid4().hex[:8]}"
    vhost = rabbit_url.rsplit("/", 1)[1]
    rabbitmqctl("add_user", user, "pw")
    rabbitmqctl("set_permissions", "-p", vhost, user, "^$", "^$", "^$")
    admin = load_driver(rabbit_url)
    weak = load_driver(f"rabbit://{user}:pw@{BROKER}/{vhost}")
    try:
        address = server_address()
        admin.declare(address)
        with pytest.raises(AccessRefused, match=f"account '{user}' may not delete queue"):
            weak.remove_server_queues(address)
        assert len(admin.remove_server_queues(address)) == 1  # it was left in place
    finally:
        weak.close()
        admin.close()
        rabbitmqctl("delete_user", user)
