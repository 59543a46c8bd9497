"""The conductor over RPC: the only door to the database."""

from __future__ import annotations

import queue
from datetime import UTC, datetime
from typing import Any

import pytest

import rpclib
from services import notifications
from services.conductor.db import WrongHost
from services.conductor.rpcapi import ConductorAPI
from services.objects import Flavor, Instance
from tests.rpc.helpers import wait_until
from tests.services.conftest import Conductor

CTX: dict[str, Any] = {"request_id": "req-1"}
SMALL = Flavor(vcpus=1, memory_mb=512, disk_gb=1)


def register(api: ConductorAPI, host: str, vcpus: int = 4) -> None:
    api.register_compute(CTX, host, vcpus, 8192, 100, {"compute": "1.1"})


def placed_instance(api: ConductorAPI, host: str = "h1") -> Instance:
    register(api, host)
    inst = api.create_instance(CTX, "vm1", "p1", "u1", SMALL, "cirros")
    api.claim(CTX, str(inst.uuid), host, {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1})
    return api.get_instance(CTX, str(inst.uuid))


def state(vm_state: str, **extra: Any) -> dict[str, Any]:
    return {"vm_state": vm_state, "task_state": None, "ip_address": None, **extra}


def test_registered_hosts_are_allocation_candidates(api: ConductorAPI) -> None:
    register(api, "h1", vcpus=2)
    register(api, "h2", vcpus=8)
    hosts = {c["host"]: c["free"]["VCPU"] for c in api.allocation_candidates(CTX, 4, 512, 1)}
    assert hosts == {"h2": 8}


def test_instances_travel_as_versioned_objects(api: ConductorAPI) -> None:
    inst = placed_instance(api)
    assert isinstance(inst, Instance)
    assert (inst.host, inst.vm_state, inst.flavor.vcpus) == ("h1", "BUILDING", 1)


def test_update_from_the_placed_host_is_applied(api: ConductorAPI, conductor: Conductor) -> None:
    inst = placed_instance(api)
    launched = datetime(2030, 1, 1, tzinfo=UTC)
    api.instance_update(
        CTX, str(inst.uuid), "h1", 5, state("ACTIVE", ip_address="10.0.0.5", launched_at=launched)
    )
    wait_until(lambda: api.get_instance(CTX, str(inst.uuid)).vm_state == "ACTIVE", what="ACTIVE")
    active = api.get_instance(CTX, str(inst.uuid))
    assert (active.ip_address, active.launched_at, active.sequence) == ("10.0.0.5", launched, 5)


def test_forged_update_from_another_host_is_refused(
    api: ConductorAPI, conductor: Conductor, transport: rpclib.Transport
) -> None:
    inst = placed_instance(api, "h1")
    with pytest.raises(WrongHost):
        api.client.call(
            CTX,
            "instance_update",
            instance_uuid=str(inst.uuid),
            host="h2",
            sequence=9,
            state=state("DELETED"),
        )
    api.instance_update(CTX, str(inst.uuid), "h2", 10, state("DELETED"))  # the cast path
    wait_until(lambda: bool(transport.driver.dead_letters()), what="the forged cast dead-lettered")
    assert "WrongHost" in transport.driver.dead_letters()[0].reason
    assert api.get_instance(CTX, str(inst.uuid)).vm_state == "BUILDING"


def test_duplicated_and_reordered_updates_never_roll_back(
    api: ConductorAPI, conductor: Conductor, bus_url: str
) -> None:
    inst = placed_instance(api)
    faulty = rpclib.get_transport(f"{bus_url}?duplicate=0.3&reorder=0.5&seed=9")
    compute_side = ConductorAPI(faulty)
    try:
        for seq in range(1, 41):
            vm_state = "ACTIVE" if seq % 2 else "BUILDING"
            compute_side.instance_update(
                CTX, str(inst.uuid), "h1", seq, state(vm_state, ip_address=f"10.0.0.{seq}")
            )
        wait_until(lambda: api.get_instance(CTX, str(inst.uuid)).sequence == 40, what="seq 40")
        final = api.get_instance(CTX, str(inst.uuid))
        assert (final.vm_state, final.ip_address) == ("BUILDING", "10.0.0.40")
        counts = faulty.driver.fault_counts  # type: ignore[attr-defined]
        assert counts["duplicated"] > 0 and counts["reordered"] > 0
    finally:
        faulty.close()


def test_becoming_active_emits_create_end_once(
    api: ConductorAPI, conductor: Conductor, transport: rpclib.Transport
) -> None:
    seen: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    class Billing:
        def info(
            self, ctx: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
        ) -> None:
            seen.put((event_type, payload))

    listener = rpclib.NotificationListener(
        transport, [rpclib.Target(topic=notifications.TOPIC)], [Billing()], pool="billing"
    )
    listener.start()
    try:
        inst = placed_instance(api)
        assert seen.get(timeout=10)[0] == notifications.CREATE_START
        for seq in (3, 3, 4):  # a duplicate and a re-report while ACTIVE
            api.instance_update(
                CTX,
                str(inst.uuid),
                "h1",
                seq,
                state("ACTIVE", launched_at=datetime(2030, 1, 1, tzinfo=UTC)),
            )
        event, payload = seen.get(timeout=10)
        assert event == notifications.CREATE_END
        assert (payload["instance_uuid"], payload["vcpus"]) == (str(inst.uuid), 1)
        with pytest.raises(queue.Empty):
            seen.get(timeout=0.5)
    finally:
        listener.stop()
        listener.wait(10)


def test_unplaceable_instance_is_put_in_error_with_the_reason(api: ConductorAPI) -> None:
    inst = api.create_instance(
        CTX, "big", "p1", "u1", Flavor(vcpus=64, memory_mb=1, disk_gb=1), "cirros"
    )
    failed = api.fail_unplaced(CTX, str(inst.uuid), "no valid host: nothing has 64 vCPU free")
    assert (failed.vm_state, failed.error_reason) == (
        "ERROR",
        "no valid host: nothing has 64 vCPU free",
    )
