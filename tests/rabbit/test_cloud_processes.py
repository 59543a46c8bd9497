"""The reference services over RabbitMQ, each service in its own process."""

from __future__ import annotations

import datetime as dt
import io
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import rpclib
from services.allinone import (
    COMPUTE_HOSTS,
    Processes,
    make_image,
    registered_computes,
    wait_until,
)
from services.cli import Cloud
from services.conductor.rpcapi import ConductorAPI
from services.objects import Flavor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cloud(tmp_path: Path, fresh_rabbit_url: str) -> Iterator[tuple[Cloud, Path]]:
    rabbit_url = fresh_rabbit_url
    procs = Processes(rabbit_url, tmp_path, "test:///default")
    procs.start()
    transport = rpclib.get_transport(rabbit_url)
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


def test_two_conductor_processes_apply_updates_in_order(
    tmp_path: Path, fresh_rabbit_url: str
) -> None:
    rabbit_url = fresh_rabbit_url
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.conductor.service",
                "--transport-url",
                rabbit_url,
                "--host",
                host,
                "--state-dir",
                str(tmp_path),
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
        )
        for host in ("c1", "c2")
    ]
    transport = rpclib.get_transport(rabbit_url)
    try:
        api = ConductorAPI(transport, timeout=30)
        wait_until(lambda: _answers(api), 60, "the conductors to serve")
        api.register_compute({}, "h1", 4, 4096, 40, {"compute": "1.1"})
        vm = api.create_instance(
            {}, "vm", "p", "u", Flavor(vcpus=1, memory_mb=64, disk_gb=1), "img"
        )
        api.claim({}, str(vm.uuid), "h1", {"VCPU": 1, "MEMORY_MB": 64, "DISK_GB": 1})
        sequences = list(range(1, 201)) + random.Random(4).sample(range(1, 201), 50)
        random.Random(7).shuffle(sequences)  # duplicated and out of order
        for seq in sequences:
            api.instance_update(
                {},
                str(vm.uuid),
                "h1",
                seq,
                {"vm_state": "ACTIVE", "ip_address": f"10.0.{seq // 256}.{seq % 256}"},
            )
        wait_until(lambda: api.get_instance({}, str(vm.uuid)).sequence == 200, 60, "sequence 200")
        final = api.get_instance({}, str(vm.uuid))
        assert final.ip_address == "10.0.0.200"
    finally:
        for proc in procs:
            os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
        transport.close()


def _answers(api: ConductorAPI) -> bool:
    try:
        api.list_instances({})
    except rpclib.MessagingError:
        return False
    return True
