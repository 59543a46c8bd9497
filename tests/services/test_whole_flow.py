"""The whole flow on the embedded defaults: scheduler -> compute -> conductor -> billing."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.allinone import Embedded, make_image, registered_computes, wait_until
from services.cli import Cloud
from services.scheduler.manager import BadRequest, NoValidHost


@pytest.fixture
def cloud(tmp_path: Path, bus_url: str) -> Iterator[tuple[Cloud, Embedded, Path]]:
    services = Embedded(bus_url, tmp_path, "test:///default")
    services.start()
    cloud = Cloud(services.login("admin"), out=io.StringIO())
    wait_until(
        lambda: registered_computes(cloud.conductor) == 2,
        30,
        "compute nodes",
    )
    yield cloud, services, make_image(tmp_path)
    services.stop()


def test_instances_boot_to_active_spread_over_both_nodes(
    cloud: tuple[Cloud, Embedded, Path],
) -> None:
    c, _, image = cloud
    booted = [
        c.boot(f"vm{n}", vcpus=1, memory_mb=128, disk_gb=1, image=str(image), wait=60)
        for n in range(4)
    ]
    assert [i.vm_state for i in booted] == ["ACTIVE"] * 4
    assert all(i.ip_address for i in booted)
    assert sorted(i.host for i in booted) == ["compute1", "compute1", "compute2", "compute2"]
    assert "ACTIVE" in c.out.getvalue()  # the progress lines the user sees


def test_deleted_instance_frees_its_resources_and_is_billed(
    cloud: tuple[Cloud, Embedded, Path],
) -> None:
    c, _, image = cloud
    start = dt.datetime.now(dt.UTC)
    vm = c.boot("vm", vcpus=2, memory_mb=256, disk_gb=1, image=str(image), project_id="p1", wait=60)
    host = vm.host
    before = {
        x["host"]: x["free"]["VCPU"] for x in c.conductor.allocation_candidates(c.ctx, 1, 1, 1)
    }
    deleted = c.delete(str(vm.uuid), wait=60)
    assert deleted.vm_state == "DELETED"
    wait_until(
        lambda: (
            {
                x["host"]: x["free"]["VCPU"]
                for x in c.conductor.allocation_candidates(c.ctx, 1, 1, 1)
            }[host]
            == before[host] + 2
        ),
        30,
        "the allocation to be released",
    )
    end = dt.datetime.now(dt.UTC)
    wait_until(lambda: bool(c.billing.usage(c.ctx, start, end)), 30, "billing")
    (row,) = c.billing.usage(c.ctx, start, end)
    assert (row["project_id"], row["instances"]) == ("p1", 1)
    assert row["vcpu_hours"] > 0


def test_no_valid_host_reaches_the_user_and_the_instance(
    cloud: tuple[Cloud, Embedded, Path],
) -> None:
    c, _, image = cloud
    with pytest.raises(NoValidHost, match="no valid host"):
        c.boot("huge", vcpus=4096, memory_mb=1, disk_gb=1, image=str(image))
    (huge,) = [i for i in c.conductor.list_instances(c.ctx) if i.name == "huge"]
    assert huge.vm_state == "ERROR"


def test_a_missing_image_is_refused_before_anything_is_created(
    cloud: tuple[Cloud, Embedded, Path],
) -> None:
    c, _, image = cloud
    missing = str(image.with_name("nope.qcow2"))
    with pytest.raises(BadRequest, match="nope.qcow2: no such file"):
        c.boot("broken", vcpus=1, memory_mb=64, disk_gb=1, image=missing, wait=60)
    assert [i for i in c.conductor.list_instances(c.ctx) if i.name == "broken"] == []
