"""rpclib over etcd 3.4 and 3.5 between separate processes: RPC patterns, reference services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import rpclib
from services.allinone import wait_until
from tests.support.cloud import boot_delete_and_bill, running_cloud
from tests.support.processes import WorkerProcess

WAIT = 30.0


@pytest.fixture
def transport(any_etcd_url: str) -> Iterator[rpclib.Transport]:
    t = rpclib.get_transport(any_etcd_url)
    yield t
    t.close()


def test_call_between_two_processes(
    tmp_path: Path, any_etcd_url: str, transport: rpclib.Transport
) -> None:
    with WorkerProcess(tmp_path, any_etcd_url, name="alpha", topic="t"):
        client = rpclib.RPCClient(transport, rpclib.Target(topic="t"), timeout=WAIT)
        assert client.call({}, "whoami") == "alpha"
        with pytest.raises(rpclib.NoSuchMethod):
            client.call({}, "nosuch")


def test_competing_server_processes_share_at_least_once_casts(
    tmp_path: Path, any_etcd_url: str, transport: rpclib.Transport
) -> None:
    workers = [WorkerProcess(tmp_path, any_etcd_url, name=n, topic="t") for n in ("a", "b")]
    for w in workers:
        w.start()
    try:
        client = rpclib.RPCClient(transport, rpclib.Target(topic="t"), at_least_once=True)
        for n in range(40):
            client.cast({}, "record", n=n)
        wait_until(lambda: sum(len(w.events()) for w in workers) >= 40, WAIT, "40 casts")
    finally:
        for w in workers:
            w.stop()
    seen = sorted(e["n"] for w in workers for e in w.events())
    assert seen == list(range(40))  # each cast handled exactly once
    assert all(w.events() for w in workers)  # and both servers took a share


def test_fanout_reaches_three_server_processes_once_each(
    tmp_path: Path, any_etcd_url: str, transport: rpclib.Transport
) -> None:
    workers = [WorkerProcess(tmp_path, any_etcd_url, name=n, topic="t") for n in ("a", "b", "c")]
    for w in workers:
        w.start()
    try:
        rpclib.RPCClient(transport, rpclib.Target(topic="t", fanout=True)).cast({}, "record", n=7)
        wait_until(lambda: all(w.events() for w in workers), WAIT, "all three to get it")
    finally:
        for w in workers:
            w.stop()
    assert [[e["n"] for e in w.events()] for w in workers] == [[7], [7], [7]]


def test_reference_services_boot_delete_and_bill_across_processes(
    tmp_path: Path, any_etcd_url: str
) -> None:
    """scheduler, conductor, billing and two computes, each its own process, over etcd://."""
    with running_cloud(any_etcd_url, tmp_path) as (cloud, image):
        boot_delete_and_bill(cloud, image)
