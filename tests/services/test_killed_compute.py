"""A compute process killed outright (no goodbye): once its advert expires the scheduler
places elsewhere, and the user command reports the node down (issue 13, item 3)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from services.allinone import wait_until
from services.compute.rpcapi import TOPIC as COMPUTE
from tests.support.cloud import running_cloud


def test_boots_avoid_a_compute_process_that_was_killed(
    tmp_path: Path, fresh_rabbit_url: str
) -> None:
    with running_cloud(fresh_rabbit_url, tmp_path) as (cloud, image):
        bus = cloud.transport
        (advert,) = bus.directory.view(bus.default_exchange, COMPUTE).live("compute2")
        os.kill(advert.pid, signal.SIGKILL)
        wait_until(
            lambda: not cloud.scheduler.compute_status(cloud.ctx, "compute2")["up"],
            60,
            "the scheduler to see compute2 down",
        )
        booted = [
            cloud.boot(f"vm{n}", vcpus=1, memory_mb=64, disk_gb=1, image=str(image), wait=60)
            for n in range(2)
        ]
        assert [(i.host, i.vm_state) for i in booted] == [("compute1", "ACTIVE")] * 2
