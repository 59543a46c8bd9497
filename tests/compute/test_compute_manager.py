"""ComputeManager with libvirt's test driver, real images and disks, and a recording conductor."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import libvirt
import pytest

import rpclib
from services.compute.images import GiB, ImageCache
from services.compute.manager import STATE_FIELDS, ComputeManager
from services.compute.virt import LibvirtDriver
from services.objects import Instance
from tests.compute.support import (
    ALLOCATION,
    ImageServer,
    RecordingConductor,
    StepClock,
    make_instance,
)
from tests.compute.test_compute_images import qemu_img_info


@pytest.fixture
def conductor() -> RecordingConductor:
    return RecordingConductor()


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def manager(
    driver: LibvirtDriver, images: ImageCache, conductor: RecordingConductor, clock: StepClock
) -> Iterator[ComputeManager]:
    yield ComputeManager("node1", driver, images, conductor, clock=clock, ip_timeout=2)
    for update in conductor.updates():  # the test driver's domains outlive the test otherwise
        driver.destroy(update.instance_uuid)


def build(manager: ComputeManager, image: Path | str, **kwargs: object) -> Instance:
    instance = kwargs.pop("instance", None) or make_instance()
    allocation = kwargs.pop("allocation", ALLOCATION)
    manager.build_instance({}, instance, allocation, str(image), **kwargs)  # type: ignore[arg-type]
    return instance  # type: ignore[return-value]


def domain_info(instance: Instance) -> list[int]:
    conn = libvirt.open("test:///default")
    try:
        info: list[int] = conn.lookupByUUIDString(str(instance.uuid)).info()
        return info
    finally:
        conn.close()


def test_build_reports_building_then_active_with_ip_and_launch_time(
    manager: ComputeManager, conductor: RecordingConductor, base_image: Path
) -> None:
    instance = build(manager, base_image)
    building, active = conductor.updates(str(instance.uuid))
    assert (building.state["vm_state"], building.state["task_state"]) == ("BUILDING", "spawning")
    assert active.state["vm_state"] == "ACTIVE" and active.state["task_state"] is None
    assert isinstance(ipaddress.ip_address(active.state["ip_address"]), ipaddress.IPv4Address)
    assert isinstance(active.state["launched_at"], datetime)
    assert active.state["launched_at"].tzinfo is not None
    assert building.host == active.host == "node1"


def test_every_update_carries_the_whole_state_with_an_increasing_sequence(
    manager: ComputeManager, conductor: RecordingConductor, base_image: Path
) -> None:
    instance = build(manager, base_image)
    manager.delete_instance({}, instance)
    updates = conductor.updates(str(instance.uuid))
    assert [u.state["vm_state"] for u in updates] == ["BUILDING", "ACTIVE", "DELETED"]
    assert all(tuple(u.state) == STATE_FIELDS for u in updates)
    sequences = [u.sequence for u in updates]
    assert sequences == sorted(set(sequences)) and sequences[0] > 0


def test_sequence_starts_above_the_instances_own(
    manager: ComputeManager, conductor: RecordingConductor, base_image: Path
) -> None:
    ahead = 2**62  # far beyond any clock reading
    instance = build(manager, base_image, instance=make_instance(sequence=ahead))
    assert conductor.updates(str(instance.uuid))[0].sequence == ahead + 1


def test_sequences_keep_increasing_across_a_restart(
    driver: LibvirtDriver,
    images: ImageCache,
    conductor: RecordingConductor,
    clock: StepClock,
    manager: ComputeManager,
    base_image: Path,
) -> None:
    instance = build(manager, base_image)
    restarted = ComputeManager("node1", driver, images, conductor, clock=clock, ip_timeout=2)
    restarted.delete_instance({}, instance)
    before, after = conductor.updates(str(instance.uuid))[-2:]
    assert after.sequence > before.sequence


def test_vm_gets_the_allocated_vcpus_memory_and_disk(
    manager: ComputeManager, driver: LibvirtDriver, base_image: Path
) -> None:
    allocation = {"VCPU": 3, "MEMORY_MB": 768, "DISK_GB": 2}
    instance = build(manager, base_image, allocation=allocation)
    _state, max_kib, _mem, vcpus, _cpu = domain_info(instance)
    assert (vcpus, max_kib) == (3, 768 * 1024)
    disk = qemu_img_info(driver.disk_path(str(instance.uuid)))
    assert (disk["format"], disk["virtual-size"]) == ("qcow2", 2 * GiB)


def test_build_fetches_the_image_over_http(
    manager: ComputeManager, conductor: RecordingConductor, image_server: ImageServer
) -> None:
    instance = build(manager, image_server.url("base.raw"))
    assert conductor.states(str(instance.uuid)) == ["BUILDING", "ACTIVE"]


def assert_nothing_left(driver: LibvirtDriver, instance: Instance) -> None:
    uuid = str(instance.uuid)
    assert not driver.exists(uuid)
    assert not driver.disk_path(uuid).exists()


def test_missing_image_reports_error_naming_it(
    manager: ComputeManager,
    conductor: RecordingConductor,
    driver: LibvirtDriver,
    image_server: ImageServer,
) -> None:
    url = image_server.url("gone.qcow2")
    instance = build(manager, url)
    building, error = conductor.updates(str(instance.uuid))
    assert error.state["vm_state"] == "ERROR" and error.state["task_state"] is None
    assert url in error.state["error_reason"] and "404" in error.state["error_reason"]
    assert error.sequence > building.sequence
    assert_nothing_left(driver, instance)


def test_libvirt_failure_after_spawn_reports_error_and_removes_domain_and_disk(
    manager: ComputeManager, conductor: RecordingConductor, driver: LibvirtDriver, base_image: Path
) -> None:
    instance = build(manager, base_image, network="no-such-net")
    error = conductor.updates(str(instance.uuid))[-1]
    assert error.state["vm_state"] == "ERROR"
    assert "libvirt wait_for_ip" in error.state["error_reason"]
    assert "no-such-net" in error.state["error_reason"]
    assert_nothing_left(driver, instance)


def test_disk_smaller_than_the_image_reports_error(
    manager: ComputeManager,
    conductor: RecordingConductor,
    driver: LibvirtDriver,
    qemu_img: str,
    tmp_path: Path,
) -> None:
    big = tmp_path / "big.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(big), "3G"], check=True)
    instance = build(manager, big)
    error = conductor.updates(str(instance.uuid))[-1]
    assert "exceeds the 1 GiB disk" in error.state["error_reason"]
    assert_nothing_left(driver, instance)


def test_allocation_without_disk_reports_error(
    manager: ComputeManager, conductor: RecordingConductor, base_image: Path
) -> None:
    instance = build(manager, base_image, allocation={"VCPU": 1, "MEMORY_MB": 256})
    error = conductor.updates(str(instance.uuid))[-1]
    assert error.state["vm_state"] == "ERROR"
    assert "DISK_GB" in error.state["error_reason"]


def test_delete_reports_deleted_then_releases_the_allocation(
    manager: ComputeManager, conductor: RecordingConductor, driver: LibvirtDriver, base_image: Path
) -> None:
    instance = build(manager, base_image)
    launched_at = conductor.updates()[-1].state["launched_at"]
    manager.delete_instance({}, instance)
    *_, deleted, release = conductor.events
    assert release == ("release", str(instance.uuid))
    assert not isinstance(deleted, tuple)
    assert deleted.state["vm_state"] == "DELETED"
    assert deleted.state["deleted_at"] > launched_at
    assert deleted.state["launched_at"] == launched_at  # billing needs both ends
    assert_nothing_left(driver, instance)


def test_repeated_delete_reports_the_same_deletion_time(
    manager: ComputeManager, conductor: RecordingConductor, base_image: Path
) -> None:
    instance = build(manager, base_image)
    manager.delete_instance({}, instance)
    manager.delete_instance({}, instance)
    first, second = conductor.updates(str(instance.uuid))[-2:]
    assert first.state == second.state and second.sequence > first.sequence
    assert conductor.events.count(("release", str(instance.uuid))) == 2


def test_delete_failure_reports_error_and_raises(
    manager: ComputeManager, conductor: RecordingConductor, driver: LibvirtDriver, base_image: Path
) -> None:
    instance = build(manager, base_image)
    disk = driver.disk_path(str(instance.uuid))
    disk.unlink()
    disk.mkdir()  # unlink() of a directory fails: a disk that cannot be removed
    try:
        with pytest.raises(OSError):
            manager.delete_instance({}, instance)
    finally:
        disk.rmdir()
    error = conductor.updates(str(instance.uuid))[-1]
    assert error.state["vm_state"] == "ERROR"
    assert error.state["error_reason"].startswith("delete failed:")
    assert ("release", str(instance.uuid)) not in conductor.events


def test_redelivered_build_of_a_running_instance_only_reports_it_again(
    manager: ComputeManager, conductor: RecordingConductor, base_image: Path
) -> None:
    instance = build(manager, base_image)
    build(manager, base_image, instance=instance)
    updates = conductor.updates(str(instance.uuid))
    assert [u.state["vm_state"] for u in updates] == ["BUILDING", "ACTIVE", "ACTIVE"]
    assert updates[1].state == updates[2].state
    assert updates[2].sequence > updates[1].sequence


def test_build_after_delete_is_ignored(
    manager: ComputeManager, conductor: RecordingConductor, driver: LibvirtDriver, base_image: Path
) -> None:
    instance = build(manager, base_image)
    manager.delete_instance({}, instance)
    build(manager, base_image, instance=instance)
    assert conductor.states(str(instance.uuid)) == ["BUILDING", "ACTIVE", "DELETED"]
    assert not driver.exists(str(instance.uuid))


# -- over rpclib -----------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def compute_client(
    bus_url: str, manager: ComputeManager
) -> Iterator[Callable[[str], rpclib.RPCClient]]:
    """A server for ``manager`` on topic compute / server node1; makes clients on its bus."""
    transports: list[rpclib.Transport] = [rpclib.get_transport(bus_url)]
    server = rpclib.RPCServer(
        transports[0], rpclib.Target(topic="compute", server="node1"), [manager]
    )
    server.start()

    def client(query: str = "") -> rpclib.RPCClient:
        transports.append(rpclib.get_transport(bus_url + query))
        target = rpclib.Target(topic="compute", server="node1", namespace="compute")
        return rpclib.RPCClient(transports[-1], target, at_least_once=True)

    yield client
    server.stop()
    server.wait(timeout=10)
    for transport in transports:
        transport.close()


def test_build_and_delete_casts_over_rpc(
    compute_client: Callable[[str], rpclib.RPCClient],
    conductor: RecordingConductor,
    base_image: Path,
) -> None:
    client = compute_client("")
    instance = make_instance()
    uuid = str(instance.uuid)
    client.cast({}, "build_instance", instance=instance, allocation=ALLOCATION,
                image=str(base_image), network="default")  # fmt: skip
    wait_until(lambda: "ACTIVE" in conductor.states(uuid), "ACTIVE")
    client.cast({}, "delete_instance", instance=instance)
    wait_until(lambda: ("release", uuid) in conductor.events, "the allocation's release")
    assert conductor.states(uuid) == ["BUILDING", "ACTIVE", "DELETED"]


def test_a_1_0_build_without_network_is_accepted(
    compute_client: Callable[[str], rpclib.RPCClient],
    conductor: RecordingConductor,
    base_image: Path,
) -> None:
    client = compute_client("").prepare(version="1.0")
    instance = make_instance()
    client.cast({}, "build_instance", instance=instance, allocation=ALLOCATION,
                image=str(base_image))  # fmt: skip
    wait_until(lambda: "ACTIVE" in conductor.states(str(instance.uuid)), "ACTIVE")


def test_duplicated_build_message_is_built_once(
    compute_client: Callable[[str], rpclib.RPCClient],
    conductor: RecordingConductor,
    image_server: ImageServer,
) -> None:
    client = compute_client("?duplicate=1&seed=1")  # every message arrives twice
    instance = make_instance()
    uuid = str(instance.uuid)
    client.cast({}, "build_instance", instance=instance, allocation=ALLOCATION,
                image=image_server.url("gone.qcow2"))  # fmt: skip
    wait_until(lambda: conductor.states(uuid).count("ERROR") == 2, "both deliveries")
    assert conductor.states(uuid) == ["BUILDING", "ERROR", "ERROR"]
    assert image_server.requests["/gone.qcow2"] == 1
