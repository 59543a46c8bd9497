"""The driver's lease: if etcd loses it, the driver puts back what hung on it."""

from __future__ import annotations

import queue
import uuid

from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.etcd import EtcdDriver
from tests.support.etcd import EtcdServer

WAIT = 20.0


def test_a_lost_lease_is_replaced_consumers_return_and_inboxes_hear_lost(
    etcd_server: EtcdServer,
) -> None:
    prefix = f"lease{uuid.uuid4().hex[:6]}"
    owner = load_driver(etcd_server.url(prefix, lease_ttl="3"))
    sender = load_driver(etcd_server.url(prefix))
    assert isinstance(owner, EtcdDriver)
    address = Address("ex", "leased")
    got: queue.Queue[Incoming] = queue.Queue()
    events: queue.Queue[str] = queue.Queue()
    try:
        owner.listen(address, got.put)
        owner.open_inbox(lambda body: None, events.put)
        lost = owner.lease_id
        etcd_server.request("kv/lease/revoke", {"ID": str(lost)})  # as if it had expired
        assert events.get(timeout=WAIT) == "lost"
        assert owner.lease_id != lost
        sender.send(address, b"after", guarantee=Guarantee.AT_MOST_ONCE)
        assert got.get(timeout=WAIT).body == b"after"
    finally:
        owner.close()
        sender.close()
