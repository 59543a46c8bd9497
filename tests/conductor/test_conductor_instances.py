"""Instances: creation, listings, sequenced updates from compute hosts, usage audit."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine

from services.conductor.db import (
    ConductorDB,
    Instance,
    InstanceExists,
    InstanceNotFound,
    VmState,
    WrongHost,
)
from tests.conductor.support import host_inventories, race

MakeInstance = Callable[..., Instance]
T0 = datetime(2030, 6, 1, tzinfo=UTC)


@pytest.fixture
def placed(db: ConductorDB, make_instance: MakeInstance) -> Instance:
    """An instance claimed on host h1."""
    db.ensure_provider("h1", host_inventories())
    vm = make_instance()
    db.claim(vm.uuid, "h1", vm.resources)
    return db.get_instance(vm.uuid)


def state_at(sequence: int) -> dict[str, Any]:
    """The full mutable state a compute host reports with update ``sequence``."""
    return {
        "vm_state": VmState.ACTIVE if sequence % 2 else VmState.BUILDING,
        "task_state": f"task-{sequence}",
        "ip_address": f"10.0.{sequence // 256}.{sequence % 256}",
        "launched_at": T0 + timedelta(seconds=sequence),
    }


def test_a_new_instance_is_building_unplaced_at_sequence_zero(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    vm = make_instance(name="web", vcpus=2, memory_mb=2048, disk_gb=20)

    assert db.get_instance(vm.uuid) == vm
    assert (vm.name, vm.vm_state, vm.host, vm.sequence) == ("web", VmState.BUILDING, None, 0)
    assert vm.created_at.tzinfo is UTC
    assert vm.resources == {"VCPU": 2, "MEMORY_MB": 2048, "DISK_GB": 20}


def test_creating_an_existing_uuid_raises(db: ConductorDB, make_instance: MakeInstance) -> None:
    vm = make_instance()

    with pytest.raises(InstanceExists, match=vm.uuid):
        make_instance(uuid=vm.uuid)


def test_an_unknown_instance_is_not_found(db: ConductorDB) -> None:
    with pytest.raises(InstanceNotFound):
        db.get_instance("00000000-0000-0000-0000-000000000000")


def test_instances_are_listed_oldest_first_by_project_and_host(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories())
    a, b, c = make_instance(name="a"), make_instance(name="b", project_id="p2"), make_instance()
    db.claim(c.uuid, "h1", c.resources)

    assert [i.uuid for i in db.list_instances()] == [a.uuid, b.uuid, c.uuid]
    assert [i.uuid for i in db.list_instances("p1")] == [a.uuid, c.uuid]
    assert [i.uuid for i in db.list_instances(host="h1")] == [c.uuid]


def test_deleted_instances_are_listed_only_when_asked(db: ConductorDB, placed: Instance) -> None:
    db.apply_instance_update(placed.uuid, "h1", 1, {"vm_state": "DELETED", "deleted_at": T0})

    assert db.list_instances() == []
    assert [i.uuid for i in db.list_instances(include_deleted=True)] == [placed.uuid]


def test_a_newer_update_is_applied_and_recorded_as_an_event(
    db: ConductorDB, placed: Instance
) -> None:
    assert db.apply_instance_update(placed.uuid, "h1", 1, state_at(1), event="spawned")

    stored = db.get_instance(placed.uuid)
    assert (stored.vm_state, stored.ip_address, stored.launched_at) == (
        VmState.ACTIVE,
        "10.0.0.1",
        T0 + timedelta(seconds=1),
    )
    assert stored.sequence == 1
    event = db.list_instance_events(placed.uuid)[-1]
    assert (event.name, event.sequence) == ("spawned", 1)
    assert event.detail["launched_at"] == (T0 + timedelta(seconds=1)).isoformat()


def test_a_duplicate_update_is_ignored(db: ConductorDB, placed: Instance) -> None:
    db.apply_instance_update(placed.uuid, "h1", 3, {"task_state": "spawning"})

    assert db.apply_instance_update(placed.uuid, "h1", 3, {"task_state": "spawning"}) is False
    assert [e.sequence for e in db.list_instance_events(placed.uuid)] == [0, 3]


def test_an_older_update_never_rolls_state_back(db: ConductorDB, placed: Instance) -> None:
    db.apply_instance_update(placed.uuid, "h1", 5, {"vm_state": "ACTIVE"})

    assert db.apply_instance_update(placed.uuid, "h1", 4, {"vm_state": "BUILDING"}) is False
    stored = db.get_instance(placed.uuid)
    assert (stored.vm_state, stored.sequence) == (VmState.ACTIVE, 5)


def test_an_update_from_another_host_is_refused(db: ConductorDB, placed: Instance) -> None:
    with pytest.raises(WrongHost, match="from host 'h2' refused: placed on 'h1'") as refused:
        db.apply_instance_update(placed.uuid, "h2", 1, {"vm_state": "ERROR"})

    assert (refused.value.host, refused.value.placed_on) == ("h2", "h1")
    assert db.get_instance(placed.uuid).vm_state is VmState.BUILDING


def test_an_update_for_an_unplaced_instance_is_refused(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    vm = make_instance()

    with pytest.raises(WrongHost, match="not placed on any host"):
        db.apply_instance_update(vm.uuid, "h1", 1, {"vm_state": "ACTIVE"})


def test_an_update_touching_another_field_is_refused_naming_it(
    db: ConductorDB, placed: Instance
) -> None:
    with pytest.raises(ValueError, match="'host'"):
        db.apply_instance_update(placed.uuid, "h1", 1, {"vm_state": "ACTIVE", "host": "h2"})

    assert db.get_instance(placed.uuid) == placed


@pytest.mark.parametrize(
    "changes",
    [
        {"vm_state": "RUNNING"},
        {"ip_address": 10},
        {"launched_at": datetime(2030, 1, 1)},  # naive
    ],
)
def test_an_update_with_a_bad_value_is_refused(
    db: ConductorDB, placed: Instance, changes: dict[str, object]
) -> None:
    [field] = changes

    with pytest.raises(ValueError, match=field):
        db.apply_instance_update(placed.uuid, "h1", 1, changes)


def test_concurrent_shuffled_duplicated_updates_end_at_the_highest_sequence(
    db: ConductorDB, placed: Instance, make_engine: Callable[[], Engine]
) -> None:
    conductors = [db, ConductorDB(make_engine())]
    deliveries = list(range(1, 41)) * 2
    random.Random(7).shuffle(deliveries)

    def deliver_share(worker: int) -> list[int]:
        conductor = conductors[worker % 2]
        return [
            seq
            for seq in deliveries[worker::8]
            if conductor.apply_instance_update(placed.uuid, "h1", seq, state_at(seq))
        ]

    outcomes = race(deliver_share, range(8))

    shares = [o for o in outcomes if isinstance(o, list)]
    assert len(shares) == 8, outcomes
    applied = [seq for share in shares for seq in share]
    assert len(applied) == len(set(applied))
    stored = db.get_instance(placed.uuid)
    assert stored.sequence == 40
    assert (stored.vm_state, stored.task_state, stored.ip_address, stored.launched_at) == tuple(
        state_at(40).values()
    )
    events = [e.sequence for e in db.list_instance_events(placed.uuid)][1:]
    assert events == sorted(set(applied)) and events[-1] == 40


def test_timestamps_come_back_as_utc(db: ConductorDB, placed: Instance) -> None:
    paris = timezone(timedelta(hours=2))
    db.apply_instance_update(
        placed.uuid, "h1", 1, {"launched_at": datetime(2030, 6, 1, 2, 0, tzinfo=paris)}
    )

    launched_at = db.get_instance(placed.uuid).launched_at
    assert launched_at == T0 and launched_at.tzinfo is UTC


def test_usage_covers_instances_alive_in_the_window(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    db.ensure_provider("h1", host_inventories(vcpus=64))
    start, end = T0, T0 + timedelta(hours=1)
    hour = timedelta(hours=1)
    lives = {
        "whole": (start - hour, None),
        "started": (start + hour / 4, None),
        "ended": (start - hour, start + hour / 2),
        "gone_before": (start - 2 * hour, start),
        "launched_after": (end, None),
        "never_launched": (None, None),
    }
    for sequence, (name, (launched_at, deleted_at)) in enumerate(lives.items(), start=1):
        vm = make_instance(name=name, vcpus=2)
        db.claim(vm.uuid, "h1", vm.resources)
        db.apply_instance_update(
            vm.uuid, "h1", sequence, {"launched_at": launched_at, "deleted_at": deleted_at}
        )

    usage = {u.name: u for u in db.usage_between(start, end)}

    assert sorted(usage) == ["ended", "started", "whole"]
    assert {name: u.seconds for name, u in usage.items()} == {
        "whole": 3600.0,
        "started": 2700.0,
        "ended": 1800.0,
    }
    assert usage["ended"].period_end == start + hour / 2
    assert usage["whole"].vcpus == 2


def test_unplaced_instance_can_be_failed_with_a_reason(
    db: ConductorDB, make_instance: MakeInstance
) -> None:
    vm = make_instance()
    assert db.fail_unplaced(vm.uuid, "no valid host: nothing has 1 vCPU free") is True
    failed = db.get_instance(vm.uuid)
    assert failed.vm_state == VmState.ERROR
    assert failed.error_reason == "no valid host: nothing has 1 vCPU free"
    assert db.fail_unplaced(vm.uuid, "again") is False


def test_a_placed_instance_is_not_failed_as_unplaced(db: ConductorDB, placed: Instance) -> None:
    assert db.fail_unplaced(placed.uuid, "no valid host") is False
    assert db.get_instance(placed.uuid).vm_state != VmState.ERROR
