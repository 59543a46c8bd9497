"""rpclib over etcd between separate processes: RPC patterns and the reference services."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import rpclib
from services.allinone import COMPUTE_HOSTS, Processes, make_image, registered_computes, wait_until
from services.cli import Cloud
from tests.support.processes import WorkerProcess

WAIT = 30.0


@pytest.fixture
def transport(etcd_url: str) -> Iterator[rpclib.Transport]:
    t = rpclib.get_transport(etcd_url)
    yield t
    t.close()


def test_call_between_two_processes(
    tmp_path: Path, etcd_url: str, transport: rpclib.Transport
) -> None:
    with WorkerProcess(tmp_path, etcd_url, name="alpha", topic="t"):
        client = rpclib.RPCClient(transport, rpclib.Target(topic="t"), timeout=WAIT)
        assert client.call({}, "whoami") == "alpha"
        with pytest.raises(rpclib.NoSuchMethod):
            client.call({}, "nosuch")


def test_competing_server_processes_share_at_least_once_casts(
    tmp_path: Path, etcd_url: str, transport: rpclib.Transport
) -> None:
    workers = [WorkerProcess(tmp_path, etcd_url, name=n, topic="t") for n in ("a", "b")]
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
    tmp_path: Path, etcd_url: str, transport: rpclib.Transport
) -> None:
    workers = [WorkerProcess(tmp_path, etcd_url, name=n, topic="t") for n in ("a", "b", "c")]
    for w in workers:
        w.start()
    try:
        rpclib.RPCClient(transport, rpclib.Target(topic="t", fanout=True)).cast({}, "record", n=7)
        wait_until(lambda: all(w.events() for w in workers), WAIT, "all three to get it")
    finally:
        for w in workers:
            w.stop()
    assert [[e["n"] for e in w.events()] for w in workers] == [[7], [7], [7]]


@pytest.fixture
def cloud(tmp_path: Path, etcd_url: str) -> Iterator[tuple[Cloud, Path]]:
    """scheduler, conductor, billing and two computes, each its own process, over etcd://."""
    procs = Processes(etcd_url, tmp_path, "test:///default")
    procs.start()
    transport = rpclib.get_transport(etcd_url)
    cloud = Cloud(transport, out=io.StringIO())
    try:
        wait_until(
            lambda: registered_computes(cloud.conductor) == len(COMPUTE_HOSTS),
            60,
            "both compute processes to register",
        )
        yield cloud, make_image(tmp_path)
    finally:
        procs.stop()
        transport.close()
        assert all(p.returncode is not None for p in procs.procs)


def test_reference_services_boot_delete_and_bill_across_processes(
    cloud: tuple[Cloud, Path],
) -> None:
    c, image = cloud
    start = dt.datetime.now(dt.UTC)
    booted = [
        c.boot(
            f"vm{n}", vcpus=1, memory_mb=128, disk_gb=1, image=str(image), project_id="p1", wait=120
        )
        for n in range(2)
    ]
    assert [i.vm_state for i in booted] == ["ACTIVE", "ACTIVE"]
    assert sorted(str(i.host) for i in booted) == sorted(COMPUTE_HOSTS)
    assert c.delete(str(booted[0].uuid), wait=120).vm_state == "DELETED"
    wait_until(
        lambda: (
            sum(r["instances"] for r in c.billing.usage(c.ctx, start, dt.datetime.now(dt.UTC))) == 2
        ),
        60,
        "billing to see both instances",
    )
