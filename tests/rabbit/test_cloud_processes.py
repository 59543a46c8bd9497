"""The reference services over RabbitMQ (3.10 and 4.x), each service in its own process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import rpclib
from services.allinone import wait_until
from services.conductor.rpcapi import ConductorAPI
from services.objects import Flavor
from tests.support.cloud import boot_delete_and_bill, running_cloud

ROOT = Path(__file__).resolve().parents[2]


def test_instances_boot_across_processes_and_are_billed(
    tmp_path: Path, fresh_broker_admin_url: str
) -> None:
    """Each service its own process with its own least-privilege account, checking senders."""
    with running_cloud(fresh_broker_admin_url, tmp_path, authorization=True) as (cloud, image):
        boot_delete_and_bill(cloud, image)


def test_two_conductor_processes_apply_updates_in_order(
    tmp_path: Path, fresh_broker_url: str
) -> None:
    rabbit_url = fresh_broker_url
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
                # one shared account, hosts from the arguments: this test is about ordering
                "--authorization",
                "false",
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
