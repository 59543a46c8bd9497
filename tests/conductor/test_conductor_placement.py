"""Resource providers, allocation candidates, claims and releases."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from services.conductor.db import (
    DISK_GB,
    MEMORY_MB,
    VCPU,
    Allocation,
    ClaimConflict,
    ConductorDB,
    Instance,
    InstanceNotFound,
    Inventory,
    InventoryInUse,
    NoCapacity,
    Provider,
    ProviderNotFound,
)
from services.conductor.db import api as db_api
from tests.conductor.support import host_inventories, race

MakeInstance = Callable[..., Instance]


def test_ensure_provider_creates_it_with_its_inventories(db: ConductorDB) -> None:
    created = db.ensure_provider("h1", host_inventories(vcpus=4))

    assert created == db.get_provider("h1")
    assert (created.name, created.generation, created.used) == ("h1", 1, {})
    assert created.inventories[VCPU] == Inventory(4)


def test_changed_inventories_replace_the_old_and_bump_the_generation(db: ConductorDB) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=4))

    updated = db.ensure_provider("h1", {VCPU: Inventory(8, reserved=1), MEMORY_MB: Inventory(64)})

    assert updated.generation == 2
    assert db.get_provider("h1").inventories == {
        VCPU: Inventory(8, reserved=1),
        MEMORY_MB: Inventory(64),
    }


def test_reporting_the_same_inventories_keeps_the_generation(db: ConductorDB) -> None:
    db.ensure_provider("h1", host_inventories())

    assert db.ensure_provider("h1", host_inventories()).generation == 1


def test_removing_an_inventory_that_allocations_use_is_refused(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories())
    vm = make_instance()
    db.claim(vm.uuid, "h1", vm.resources)

    with pytest.raises(InventoryInUse, match="DISK_GB"):
        db.ensure_provider("h1", {VCPU: Inventory(8), MEMORY_MB: Inventory(8192)})
    assert DISK_GB in db.get_provider("h1").inventories


def test_hosts_reporting_a_new_provider_at_once_create_it_once(db: ConductorDB) -> None:
    outcomes = race(lambda _: db.ensure_provider("h1", host_inventories()), range(6))

    assert {o.uuid for o in outcomes if isinstance(o, Provider)} == {db.get_provider("h1").uuid}
    assert db.get_provider("h1").generation == 1


def test_unknown_provider_is_not_found(db: ConductorDB) -> None:
    with pytest.raises(ProviderNotFound, match="h9"):
        db.get_provider("h9")


def test_candidates_respect_reserved_and_allocation_ratio(db: ConductorDB) -> None:
    db.ensure_provider(
        "h1",
        {
            VCPU: Inventory(4, allocation_ratio=4.0),
            MEMORY_MB: Inventory(2048, reserved=1024),
            DISK_GB: Inventory(10, reserved=2, allocation_ratio=1.5),
        },
    )

    [fits] = db.allocation_candidates(vcpus=16, memory_mb=1024, disk_gb=12)
    assert fits.free == fits.capacity == {VCPU: 16, MEMORY_MB: 1024, DISK_GB: 12}
    assert db.allocation_candidates(vcpus=17, memory_mb=1024, disk_gb=1) == []
    assert db.allocation_candidates(vcpus=1, memory_mb=1025, disk_gb=1) == []
    assert db.allocation_candidates(vcpus=1, memory_mb=1, disk_gb=13) == []


def test_candidates_subtract_what_is_allocated(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=4, memory_mb=4096, disk_gb=40))
    vm = make_instance(vcpus=3, memory_mb=1024, disk_gb=10)
    db.claim(vm.uuid, "h1", vm.resources)

    [candidate] = db.allocation_candidates(vcpus=1, memory_mb=512, disk_gb=1)
    assert candidate.free == {VCPU: 1, MEMORY_MB: 3072, DISK_GB: 30}
    assert db.allocation_candidates(vcpus=2, memory_mb=512, disk_gb=1) == []


def test_candidates_respect_unit_limits(db: ConductorDB) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=16, max_unit=4, step_size=2))

    assert [c.name for c in db.allocation_candidates(4, 512, 1)] == ["h1"]
    assert db.allocation_candidates(6, 512, 1) == []  # above max_unit
    assert db.allocation_candidates(3, 512, 1) == []  # not a step


def test_a_provider_lacking_a_requested_class_is_no_candidate(db: ConductorDB) -> None:
    db.ensure_provider("diskless", {VCPU: Inventory(8), MEMORY_MB: Inventory(8192)})

    assert db.allocation_candidates(1, 512, 1) == []
    assert [c.name for c in db.allocation_candidates(1, 512, 0)] == ["diskless"]


def test_candidates_come_most_free_first(db: ConductorDB, make_instance: MakeInstance) -> None:
    for name in ("small", "big", "busy"):
        db.ensure_provider(name, host_inventories(memory_mb=16384 if name != "small" else 4096))
    hog = make_instance(memory_mb=15000)
    db.claim(hog.uuid, "busy", hog.resources)

    assert [c.name for c in db.allocation_candidates(1, 512, 1)] == ["big", "small", "busy"]


def test_claim_allocates_and_places_the_instance(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    provider = db.ensure_provider("h1", host_inventories())
    vm = make_instance(vcpus=2, memory_mb=1024, disk_gb=10)

    allocation = db.claim(vm.uuid, "h1", vm.resources)

    assert allocation == Allocation(vm.uuid, "h1", provider.uuid, 2, vm.resources)
    assert db.get_allocation(vm.uuid) == allocation
    assert db.get_instance(vm.uuid).host == "h1"
    assert db.get_provider("h1").used == vm.resources


def test_claim_beyond_capacity_raises_no_capacity_and_allocates_nothing(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=2))
    vm = make_instance(vcpus=3)

    with pytest.raises(NoCapacity, match="VCPU: requested 3, 2 free") as raised:
        db.claim(vm.uuid, "h1", vm.resources)

    assert (raised.value.provider, raised.value.resource_class) == ("h1", VCPU)
    assert db.get_allocation(vm.uuid) is None
    assert db.get_instance(vm.uuid).host is None


def test_claim_needs_a_known_provider_and_instance(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories())
    vm = make_instance()

    with pytest.raises(ProviderNotFound):
        db.claim(vm.uuid, "h9", vm.resources)
    with pytest.raises(InstanceNotFound):
        db.claim("00000000-0000-0000-0000-000000000000", "h1", vm.resources)


def test_claiming_again_replaces_what_the_instance_held(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    for name in ("h1", "h2"):
        db.ensure_provider(name, host_inventories(vcpus=2))
    vm = make_instance(vcpus=2)
    db.claim(vm.uuid, "h1", vm.resources)
    db.claim(vm.uuid, "h1", vm.resources)  # a retried claim: still fits, same holding

    moved = db.claim(vm.uuid, "h2", vm.resources)

    assert db.get_allocation(vm.uuid) == moved
    assert db.get_provider("h1").used == {}
    assert db.get_instance(vm.uuid).host == "h2"


def test_release_frees_capacity(db: ConductorDB, make_instance: MakeInstance) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=2))
    vm, next_vm = make_instance(vcpus=2), make_instance(vcpus=2)
    db.claim(vm.uuid, "h1", vm.resources)

    assert db.release(vm.uuid) is True

    assert db.get_provider("h1").used == {}
    assert db.release(vm.uuid) is False
    assert db.claim(next_vm.uuid, "h1", next_vm.resources).provider == "h1"


def test_racing_claims_for_the_last_slot_have_exactly_one_winner(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=4))
    first = make_instance(vcpus=2)
    db.claim(first.uuid, "h1", first.resources)
    racers = [make_instance(vcpus=2) for _ in range(10)]

    outcomes = race(lambda vm: db.claim(vm.uuid, "h1", vm.resources), racers)

    winners = [o for o in outcomes if isinstance(o, Allocation)]
    losers = [o for o in outcomes if not isinstance(o, Allocation)]
    assert len(winners) == 1
    assert all(isinstance(o, NoCapacity | ClaimConflict) for o in losers), losers
    assert db.get_provider("h1").used[VCPU] == 4
    placed = {vm.uuid for vm in db.list_instances(host="h1")}
    assert placed == {first.uuid, winners[0].instance_uuid}


def test_concurrent_claims_from_several_conductors_never_overcommit(
    db: ConductorDB, make_engine: Callable[[], Engine], make_instance: MakeInstance
) -> None:
    conductors = [db, ConductorDB(make_engine()), ConductorDB(make_engine())]
    db.ensure_provider("h1", host_inventories(vcpus=5))
    racers = [make_instance(vcpus=1) for _ in range(15)]

    outcomes = race(
        lambda i: conductors[i % 3].claim(racers[i].uuid, "h1", racers[i].resources),
        range(len(racers)),
    )

    assert sum(isinstance(o, Allocation) for o in outcomes) == 5
    assert db.get_provider("h1").used[VCPU] == 5


def test_a_claim_that_keeps_losing_the_generation_race_raises_claim_conflict(
    db: ConductorDB, make_instance: MakeInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.ensure_provider("h1", host_inventories())
    vm = make_instance()
    monkeypatch.setattr(db_api, "_bump_generation", lambda *args, **kwargs: False)

    with pytest.raises(ClaimConflict, match="10 attempts"):
        db.claim(vm.uuid, "h1", vm.resources)
    assert db.get_allocation(vm.uuid) is None
