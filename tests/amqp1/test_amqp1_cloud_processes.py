"""The reference services over ``amqp1://``, each service in its own process.

The same flow as over RabbitMQ's 0-9-1 driver: two computes register, two
instances boot on different hosts through scheduler and conductor, one is
deleted, and billing sees both.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import rpclib
from services.allinone import COMPUTE_HOSTS, Processes, make_image, registered_computes, wait_until
from services.cli import Cloud


@pytest.fixture
def cloud(tmp_path: Path, fresh_amqp1_url: str) -> Iterator[tuple[Cloud, Path]]:
    procs = Processes(fresh_amqp1_url, tmp_path, "test:///default")
    procs.start()
    transport = rpclib.get_transport(fresh_amqp1_url)
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


def test_instances_boot_across_processes_and_are_billed(cloud: tuple[Cloud, Path]) -> None:
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
