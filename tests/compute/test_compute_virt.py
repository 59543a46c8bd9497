"""LibvirtDriver against libvirt's test hypervisor (``test:///default``)."""

from __future__ import annotations

import ipaddress
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from services.compute.virt import GiB, LibvirtDriver, VirtError


@pytest.fixture
def instance_uuid(driver: LibvirtDriver) -> Iterator[str]:
    """A fresh uuid whose domain is destroyed after the test."""
    value = str(uuid.uuid4())
    yield value
    driver.destroy(value)


def spawn(driver: LibvirtDriver, instance_uuid: str, **options: object) -> None:
    disk = driver.disk_path(instance_uuid)
    driver.spawn(instance_uuid, "vm1", 2, 512, disk, **options)  # type: ignore[arg-type]


def test_host_resources_come_from_node_info_and_the_instances_dir(driver: LibvirtDriver) -> None:
    conn = libvirt.open("test:///default")
    try:
        _model, memory_mb, cpus, *_ = conn.getInfo()
    finally:
        conn.close()
    resources = driver.host_resources()
    assert (resources.vcpus, resources.memory_mb) == (cpus, memory_mb)
    assert resources.disk_gb == shutil.disk_usage(driver.instances_dir).total // GiB
    assert resources.vcpus > 0 and resources.memory_mb > 0 and resources.disk_gb > 0


def test_spawned_instance_exists_and_runs(driver: LibvirtDriver, instance_uuid: str) -> None:
    assert not driver.exists(instance_uuid)
    spawn(driver, instance_uuid)
    assert driver.exists(instance_uuid)
    assert driver.is_running(instance_uuid)


def test_spawned_domain_has_the_requested_size(driver: LibvirtDriver, instance_uuid: str) -> None:
    spawn(driver, instance_uuid)
    conn = libvirt.open("test:///default")
    try:
        domain = conn.lookupByUUIDString(instance_uuid)
        _state, max_kib, _mem, vcpus, _cpu_time = domain.info()
        assert (vcpus, max_kib) == (2, 512 * 1024)
        assert domain.name() == f"instance-{instance_uuid}"
        assert domain.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None) == "vm1"
    finally:
        conn.close()


def test_destroy_removes_the_domain_and_is_idempotent(
    driver: LibvirtDriver, instance_uuid: str
) -> None:
    spawn(driver, instance_uuid)
    driver.destroy(instance_uuid)
    assert not driver.exists(instance_uuid)
    driver.destroy(instance_uuid)
    driver.destroy(str(uuid.uuid4()))


def test_test_driver_invents_an_ipv4_address_at_once(
    driver: LibvirtDriver, instance_uuid: str
) -> None:
    # Computed from the network's DHCP range start and the domain's id, which grows for
    # the whole process: past ~12 domains it leaves 192.168.122.0/24. No lease exists.
    spawn(driver, instance_uuid)
    address = driver.wait_for_ip(instance_uuid, timeout=0)
    assert address is not None
    assert isinstance(ipaddress.ip_address(address), ipaddress.IPv4Address)


def test_wait_for_ip_of_a_missing_domain_is_an_error(driver: LibvirtDriver) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(VirtError, match="not running") as caught:
        driver.wait_for_ip(missing, timeout=1)
    assert (caught.value.operation, caught.value.instance_uuid) == ("wait_for_ip", missing)


def test_wait_for_ip_on_an_unknown_network_names_it(
    driver: LibvirtDriver, instance_uuid: str
) -> None:
    spawn(driver, instance_uuid, network="no-such-net")
    with pytest.raises(VirtError, match="no-such-net") as caught:
        driver.wait_for_ip(instance_uuid, timeout=1)
    assert caught.value.instance_uuid == instance_uuid


def test_define_failure_names_the_operation_and_instance(
    driver: LibvirtDriver, instance_uuid: str
) -> None:
    squatter = str(uuid.uuid4())  # another domain already holds the instance's domain name
    xml = driver.domain_xml(squatter, "other", 1, 256, driver.disk_path(squatter))
    conn = libvirt.open("test:///default")
    try:
        conn.defineXML(xml.replace(f"instance-{squatter}", f"instance-{instance_uuid}"))
        with pytest.raises(VirtError, match="already exists") as caught:
            spawn(driver, instance_uuid)
        assert caught.value.operation == "define"
        assert caught.value.instance_uuid == instance_uuid
        assert f"libvirt define of instance {instance_uuid} failed" in str(caught.value)
    finally:
        conn.lookupByUUIDString(squatter).undefine()
        conn.close()


def test_unreachable_uri_is_a_connect_error(tmp_path: Path) -> None:
    broken = LibvirtDriver("test:///no/such/config.xml", instances_dir=tmp_path)
    with pytest.raises(VirtError, match=r"libvirt connect failed: test:///no/such/config.xml"):
        broken.host_resources()


def test_unknown_uri_scheme_needs_an_explicit_domain_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="virt_type"):
        LibvirtDriver("xen:///system", instances_dir=tmp_path)
    assert (
        LibvirtDriver("xen:///system", instances_dir=tmp_path, virt_type="xen").virt_type == "xen"
    )


def domain(driver: LibvirtDriver, **options: Path | str) -> ET.Element:
    instance_uuid = "6c1a5b9e-4a1f-4d3e-9a55-0c3f1d2e3b4a"
    disk = driver.disk_path(instance_uuid)
    xml = driver.domain_xml(instance_uuid, "web <1>", 2, 512, disk, **options)  # type: ignore[arg-type]
    return ET.fromstring(xml)


def attr(root: ET.Element, path: str, name: str) -> str | None:
    element = root.find(path)
    assert element is not None, f"no {path} in the domain XML"
    return element.get(name)


def test_qemu_domains_are_software_emulated_with_virtio_disk_nic_and_serial(
    tmp_path: Path,
) -> None:
    qemu = LibvirtDriver("qemu:///system", instances_dir=tmp_path)  # connects only when used
    root = domain(qemu, network="tenant")
    assert root.get("type") == "qemu"
    assert root.findtext("title") == "web <1>"
    assert (root.findtext("vcpu"), root.findtext("memory")) == ("2", "512")
    assert attr(root, "memory", "unit") == "MiB"
    assert attr(root, "devices/disk/driver", "type") == "qcow2"
    assert attr(root, "devices/disk/target", "bus") == "virtio"
    expected_disk = qemu.disk_path("6c1a5b9e-4a1f-4d3e-9a55-0c3f1d2e3b4a")
    assert attr(root, "devices/disk/source", "file") == str(expected_disk)
    assert attr(root, "devices/interface/source", "network") == "tenant"
    assert attr(root, "devices/interface/model", "type") == "virtio"
    assert attr(root, "devices/serial/log", "file") is not None
    assert attr(root, "devices/console/target", "type") == "serial"
    assert root.find("os/boot") is not None and root.find("os/kernel") is None


def test_direct_kernel_boot_puts_kernel_initrd_and_cmdline_in_os(driver: LibvirtDriver) -> None:
    root = domain(driver, kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"), cmdline="quiet")
    assert root.get("type") == "test"
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.findtext("os/initrd") == "/k/initrd"
    assert root.findtext("os/cmdline") == "quiet"
    assert root.find("os/boot") is None
