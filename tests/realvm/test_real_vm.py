"""A real VM through the real services: booted, ACTIVE with a DHCP address, deleted.

Conductor, scheduler, billing and one compute node run in this process on a
``memory://`` bus; the compute node drives the session's own libvirtd
(tests.support.libvirtd) on ``qemu:///system`` with QEMU's software emulation.
The guest is a Debian kernel and a busybox initramfs that asks for a DHCP
lease (tests.support.guest), booted directly from the instance's metadata.
Needs root; never skipped.
"""

from __future__ import annotations

import io
import ipaddress
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.transports.memory import reset_bus
from services.billing.service import BillingService
from services.cli import Cloud
from services.common.accounts import CloudHosts, provision_cloud
from services.compute.manager import CMDLINE_KEY, INITRD_KEY, KERNEL_KEY
from services.compute.service import ComputeService
from services.conductor.service import ConductorService
from services.objects import Instance
from services.scheduler.service import SchedulerService
from tests.support.guest import Guest, GuestError, build_guest
from tests.support.libvirtd import NETWORK

pytestmark = pytest.mark.realvm

HOST = "realvm1"
BOOT_TIMEOUT = 180.0  # TCG boots the guest in ~20 s; CI machines may be much slower
DELETE_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def guest() -> Guest:
    try:
        return build_guest()
    except GuestError as exc:
        pytest.fail(f"could not build the test guest: {exc}", pytrace=False)


@pytest.fixture
def cloud_services(
    libvirtd: str, guest: Guest, tmp_path: Path
) -> Iterator[tuple[Cloud, ComputeService]]:
    """The services on a fresh bus, with one compute node on the session's libvirtd.

    Each service logs in with its own account; compute takes local images from
    ``tmp_path`` and the guest's directory only.
    """
    bus = f"realvm{uuid.uuid4().hex[:12]}"
    urls = provision_cloud(
        f"memory://{bus}", CloudHosts("conductor1", "scheduler1", "billing1", (HOST,))
    )
    transports = {p: rpclib.get_transport(url) for p, url in urls.items()}
    compute = ComputeService(
        transports[f"compute-{HOST}"],
        host=HOST,
        libvirt_uri=libvirtd,
        state_dir=tmp_path,
        image_dirs=[tmp_path, guest.kernel.parent],
    )
    services: list[ConductorService | SchedulerService | BillingService | ComputeService] = [
        ConductorService(transports["conductor-conductor1"], host="conductor1", state_dir=tmp_path),
        SchedulerService(transports["scheduler-scheduler1"], host="scheduler1"),
        BillingService(transports["billing-billing1"], host="billing1", state_dir=tmp_path),
        compute,
    ]
    started: list[ConductorService | SchedulerService | BillingService | ComputeService] = []
    try:
        for service in services:
            service.start()
            started.append(service)
        yield Cloud(transports["admin"], out=io.StringIO()), compute
    finally:
        for service in reversed(started):
            service.stop()
        for transport in transports.values():
            transport.close()
        reset_bus(bus)


def free_resources(cloud: Cloud) -> dict[str, int]:
    """What placement has free on the compute node."""
    candidates = cloud.conductor.allocation_candidates(cloud.ctx, 1, 1, 1)
    free: dict[str, int] = next(c["free"] for c in candidates if c["host"] == HOST)
    return free


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def network_subnet(conn: Any) -> ipaddress.IPv4Network:
    """The IPv4 subnet of the libvirt network the instance is on (192.168.122.0/24)."""
    root = ET.fromstring(conn.networkLookupByName(NETWORK).XMLDesc())
    ip = root.find("ip")
    assert ip is not None, f"network {NETWORK} has no IPv4 address"
    return ipaddress.IPv4Network(f"{ip.get('address')}/{ip.get('netmask')}", strict=False)


def test_a_real_vm_boots_active_with_a_dhcp_address_and_is_deleted(
    libvirtd: str,
    guest: Guest,
    cloud_services: tuple[Cloud, ComputeService],
    tmp_path: Path,
) -> None:
    import libvirt

    cloud, compute = cloud_services
    image = tmp_path / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    wait_until(
        lambda: bool(cloud.conductor.allocation_candidates(cloud.ctx, 1, 1, 1)),
        60,
        "the compute node to register",
    )
    free_before = free_resources(cloud)
    conn = libvirt.open(libvirtd)
    try:
        placed = cloud.boot(
            "tiny",
            wait=None,
            vcpus=1,
            memory_mb=256,
            disk_gb=1,
            image=str(image),
            metadata={
                KERNEL_KEY: str(guest.kernel),
                INITRD_KEY: str(guest.initrd),
                CMDLINE_KEY: guest.cmdline,
            },
        )
        uuid_ = str(placed.uuid)
        assert placed.host == HOST
        assert placed.metadata[KERNEL_KEY] == str(guest.kernel)
        console: list[str] = [""]

        def settled(instance: Instance) -> bool:
            log = compute.driver.console_log(uuid_)  # removed by a failed build: keep a copy
            if log.exists():
                console[0] = log.read_text(errors="replace")
            return instance.vm_state in ("ACTIVE", "ERROR")

        instance = cloud.wait_for(uuid_, settled, BOOT_TIMEOUT)
        assert instance.vm_state == "ACTIVE", (
            f"{instance.vm_state}: {instance.error_reason}\n--- console:\n{console[0][-3000:]}"
        )
        assert instance.ip_address is not None
        assert ipaddress.ip_address(instance.ip_address) in network_subnet(conn)
        domain = conn.lookupByUUIDString(uuid_)
        assert domain.isActive() == 1
        macs = {
            mac.get("address")
            for mac in ET.fromstring(domain.XMLDesc()).iterfind("./devices/interface/mac")
        }
        leases = conn.networkLookupByName(NETWORK).DHCPLeases()
        assert {(lease["mac"], lease["ipaddr"]) for lease in leases} & {
            (mac, instance.ip_address) for mac in macs
        }, f"no lease of {instance.ip_address} for {macs} in {leases}"
        disk = compute.driver.disk_path(uuid_)
        assert disk.exists()
        assert free_resources(cloud)["MEMORY_MB"] == free_before["MEMORY_MB"] - 256

        deleted = cloud.delete(uuid_, wait=DELETE_TIMEOUT)
        assert deleted.vm_state == "DELETED", deleted.error_reason
        with pytest.raises(libvirt.libvirtError) as missing:
            conn.lookupByUUIDString(uuid_)
        assert missing.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        assert not disk.exists()
        wait_until(lambda: free_resources(cloud) == free_before, 30, "the allocation's release")
    finally:
        conn.close()
