"""The scheduler: places, claims, casts builds, downgrades for old compute nodes."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.objects import Registry, VersionedObject, fields
from services.compute.rpcapi import ComputeAPI
from services.conductor.rpcapi import ConductorAPI
from services.objects import VM_STATES, Instance
from services.scheduler.manager import NoValidHost, SchedulerManager
from services.scheduler.rpcapi import SchedulerAPI
from tests.services.conftest import Conductor

CTX: dict[str, Any] = {"request_id": "req-1"}

# What a compute node one release behind knows: compute 1.0, Instance/Flavor 1.0.
OLD_OBJECTS = Registry()


@OLD_OBJECTS.register
class FlavorV10(VersionedObject):
    OBJ_NAME = "Flavor"
    VERSION = "1.0"
    fields = {
        "name": fields.String(default="custom"),
        "vcpus": fields.Integer(),
        "memory_mb": fields.Integer(),
        "disk_gb": fields.Integer(),
    }


@OLD_OBJECTS.register
class InstanceV10(VersionedObject):
    OBJ_NAME = "Instance"
    VERSION = "1.0"
    fields = {
        name: field
        for name, field in Instance.fields.items()  # type: ignore[attr-defined]
        if name not in ("metadata", "key_data", "user_data")
    } | {"flavor": fields.Object("Flavor"), "vm_state": fields.Enum(VM_STATES, default="BUILDING")}


class FakeCompute:
    """Records the builds it receives; speaks compute ``version``."""

    def __init__(self, version: str) -> None:
        self.target = rpclib.Target(namespace="compute", version=version)
        self.builds: queue.Queue[dict[str, Any]] = queue.Queue()

    def build_instance(self, ctx: dict[str, Any], **kwargs: Any) -> None:
        self.builds.put(kwargs)

    def delete_instance(self, ctx: dict[str, Any], instance: Any) -> None:
        self.builds.put({"deleted": instance})


@pytest.fixture
def scheduler(transport: rpclib.Transport, conductor: Conductor) -> Iterator[SchedulerAPI]:
    manager = SchedulerManager(ConductorAPI(transport), ComputeAPI(transport))
    server = rpclib.RPCServer(transport, rpclib.Target(topic="scheduler", server="s1"), [manager])
    server.start()
    yield SchedulerAPI(transport, timeout=10)
    server.stop()
    server.wait(10)


@pytest.fixture
def computes(transport: rpclib.Transport, api: ConductorAPI) -> Iterator[dict[str, FakeCompute]]:
    nodes = {"big": FakeCompute("1.1"), "small": FakeCompute("1.1")}
    servers = []
    for host, vcpus in (("big", 8), ("small", 2)):
        api.register_compute(CTX, host, vcpus, 8192, 100, {"compute": "1.1"})
        server = rpclib.RPCServer(
            transport, rpclib.Target(topic="compute", server=host), [nodes[host]]
        )
        server.start()
        servers.append(server)
    yield nodes
    for server in servers:
        server.stop()
        server.wait(10)


def boot(scheduler: SchedulerAPI, **overrides: Any) -> Instance:
    request = {
        "name": "vm",
        "vcpus": 1,
        "memory_mb": 256,
        "disk_gb": 1,
        "image": "/images/cirros.qcow2",
    }
    return scheduler.boot(CTX, **(request | overrides))


def test_spread_places_on_the_host_with_most_room(
    scheduler: SchedulerAPI, computes: dict[str, FakeCompute]
) -> None:
    placed = boot(scheduler)
    assert placed.host == "big"
    build = computes["big"].builds.get(timeout=10)
    assert isinstance(build["instance"], Instance) and build["instance"].uuid == placed.uuid
    assert build["allocation"] == {"VCPU": 1, "MEMORY_MB": 256, "DISK_GB": 1}


def test_pack_places_on_the_fullest_host_that_fits(
    scheduler: SchedulerAPI, computes: dict[str, FakeCompute]
) -> None:
    assert boot(scheduler, strategy="pack").host == "small"


def test_no_valid_host_errors_to_the_user_and_the_instance(
    scheduler: SchedulerAPI, computes: dict[str, FakeCompute], api: ConductorAPI
) -> None:
    with pytest.raises(NoValidHost, match="no valid host: no compute node has 64 vCPU"):
        boot(scheduler, name="huge", vcpus=64)
    (failed,) = [i for i in api.list_instances(CTX) if i.name == "huge"]
    assert failed.vm_state == "ERROR" and "no valid host" in (failed.error_reason or "")


def test_claims_use_up_capacity(scheduler: SchedulerAPI, computes: dict[str, FakeCompute]) -> None:
    hosts = [boot(scheduler, vcpus=2).host for _ in range(5)]
    assert sorted(hosts) == ["big", "big", "big", "big", "small"]
    with pytest.raises(NoValidHost):
        boot(scheduler, vcpus=2)


def test_old_compute_node_gets_a_downgraded_build_it_understands(
    transport: rpclib.Transport, scheduler: SchedulerAPI, api: ConductorAPI
) -> None:
    old = FakeCompute("1.0")
    api.register_compute(CTX, "old", 4, 8192, 100, {"compute": "1.0"})
    server = rpclib.RPCServer(
        transport,
        rpclib.Target(topic="compute", server="old"),
        [old],
        serializer=rpclib.Serializer(OLD_OBJECTS),
    )
    server.start()
    try:
        boot(scheduler, network="default")
        build = old.builds.get(timeout=10)
        assert "network" not in build  # added in compute 1.1
        assert type(build["instance"]) is InstanceV10  # backported to what it knows
        assert type(build["instance"].flavor) is FlavorV10
    finally:
        server.stop()
        server.wait(10)
