"""The reference services as separate processes over any transport URL, for flow tests.

Every transport's test suite runs the same story (two computes register, two
instances boot on different hosts, one is deleted, billing sees both) through
:func:`running_cloud` and :func:`boot_delete_and_bill`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import rpclib
from services.allinone import COMPUTE_HOSTS, Processes, make_image, registered_computes, wait_until
from services.cli import Cloud


@contextlib.contextmanager
def running_cloud(
    url: str, state_dir: Path, *, authorization: bool = False
) -> Iterator[tuple[Cloud, Path]]:
    """Scheduler, conductor, billing and two computes, each its own process, over ``url``.

    Yields a CLI-level client and an image the computes may use; every process
    is stopped (and must have exited) afterwards. With ``authorization`` each
    service gets its own account through ``rpclib.access.provision`` (the URL's
    credentials are the administrator's) and checks its senders; without, they
    share the URL's account, as before the broker transports could provision
    accounts and authenticate senders.
    """
    procs = Processes(url, state_dir, "test:///default", authorization=authorization)
    procs.start()
    transport = rpclib.get_transport(procs.admin_url)
    cloud = Cloud(transport, out=io.StringIO())
    try:
        wait_until(
            lambda: registered_computes(cloud.conductor) == len(COMPUTE_HOSTS),
            60,
            "both compute processes to register",
        )
        yield cloud, make_image(state_dir)
    finally:
        procs.stop()
        transport.close()
        assert all(p.returncode is not None for p in procs.procs)


def boot_delete_and_bill(cloud: Cloud, image: Path) -> None:
    """Boot two instances (one per compute), delete one, and wait for billing to see both."""
    start = dt.datetime.now(dt.UTC)
    booted = [
        cloud.boot(
            f"vm{n}", vcpus=1, memory_mb=128, disk_gb=1, image=str(image), project_id="p1", wait=120
        )
        for n in range(2)
    ]
    assert [i.vm_state for i in booted] == ["ACTIVE", "ACTIVE"]
    assert sorted(str(i.host) for i in booted) == sorted(COMPUTE_HOSTS)
    assert len({i.ip_address for i in booted}) == 2, "two instances were given one address"
    assert cloud.delete(str(booted[0].uuid), wait=120).vm_state == "DELETED"
    wait_until(
        lambda: (
            sum(
                r["instances"]
                for r in cloud.billing.usage(cloud.ctx, start, dt.datetime.now(dt.UTC))
            )
            == 2
        ),
        60,
        "billing to see both instances",
    )
