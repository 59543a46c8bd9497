"""The ledger: usage arithmetic, arrival order, audit evidence, dedupe by message id."""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
import threading
from pathlib import Path

import pytest

from services.billing import Ledger, ProjectUsage, UsageEvent
from tests.billing.support import Instance, hours, record

START, END = hours(10), hours(20)
VM = Instance(project_id="proj-a", vcpus=2, memory_mb=1024, disk_gb=10)


def usage_of(vm: Instance, billed_hours: float, instances: int = 1) -> ProjectUsage:
    return ProjectUsage(
        project_id=vm.project_id,
        instances=instances,
        vcpu_hours=vm.vcpus * billed_hours,
        memory_mb_hours=vm.memory_mb * billed_hours,
        disk_gb_hours=vm.disk_gb * billed_hours,
    )


@pytest.mark.parametrize(
    ("launched", "deleted", "billed"),
    [
        pytest.param(12, 15, 3, id="inside"),
        pytest.param(8, 12, 2, id="overlapping-start"),
        pytest.param(18, 25, 2, id="overlapping-end"),
        pytest.param(5, 25, 10, id="spanning"),
    ],
)
def test_an_instance_bills_its_size_times_its_overlap_with_the_window(
    ledger: Ledger, launched: float, deleted: float, billed: float
) -> None:
    record(ledger, VM.created(launched), VM.deleted(deleted))

    assert ledger.usage(START, END) == [usage_of(VM, billed)]


def test_an_instance_still_running_counts_up_to_the_end_of_the_window(ledger: Ledger) -> None:
    record(ledger, VM.created(14.5))

    assert ledger.usage(START, END) == [usage_of(VM, 5.5)]


def test_instances_outside_the_window_are_left_out(ledger: Ledger) -> None:
    before, after = Instance(), Instance()
    record(ledger, before.created(1), before.deleted(10), after.created(20))

    assert ledger.usage(START, END) == []


def test_projects_are_reported_separately_in_project_order(ledger: Ledger) -> None:
    b1, b2 = Instance(project_id="proj-b", vcpus=1), Instance(project_id="proj-b", vcpus=3)
    a = Instance(project_id="proj-a", vcpus=4, memory_mb=2048, disk_gb=20)
    record(ledger, b1.created(10), b2.created(15), b2.deleted(16), a.created(19))

    assert ledger.usage(START, END) == [
        usage_of(a, 1),
        ProjectUsage("proj-b", 2, 1 * 10 + 3 * 1, 1024 * 11, 10 * 11),
    ]


@pytest.mark.parametrize(
    "order", list(itertools.permutations(range(3))), ids=lambda o: "-".join(map(str, o))
)
def test_the_result_does_not_depend_on_arrival_order(
    tmp_path: Path, order: tuple[int, ...]
) -> None:
    resized = Instance(uuid=VM.uuid, project_id=VM.project_id, vcpus=8)
    events = [VM.created(12), VM.deleted(18), resized.exists(10, 20)]
    with (
        Ledger(tmp_path / "in-order.sqlite") as in_order,
        Ledger(tmp_path / "other.sqlite") as other,
    ):
        record(in_order, *events)
        record(other, *(events[i] for i in order))

        assert other.usage(START, END) == in_order.usage(START, END) == [usage_of(VM, 6)]


def test_delete_before_create_bills_as_create_then_delete(ledger: Ledger) -> None:
    record(ledger, VM.deleted(16), VM.created(11))

    assert ledger.usage(START, END) == [usage_of(VM, 5)]


def test_exists_events_bill_their_window_without_a_create_end(ledger: Ledger) -> None:
    record(ledger, VM.exists(8, 12), VM.exists(12, 14), VM.exists(16, 17))

    assert ledger.usage(START, END) == [usage_of(VM, 4 + 1)]


def test_an_exists_window_never_bills_before_launch_or_after_deletion(ledger: Ledger) -> None:
    record(ledger, VM.exists(10, 20), VM.created(12), VM.deleted(15))

    assert ledger.usage(START, END) == [usage_of(VM, 3)]


def test_an_exists_window_overlapping_the_lifetime_is_not_counted_twice(ledger: Ledger) -> None:
    record(ledger, VM.created(11), VM.exists(10, 14), VM.exists(14, 18))

    assert ledger.usage(START, END) == [usage_of(VM, 9)]


def test_the_same_message_id_recorded_twice_counts_once(ledger: Ledger) -> None:
    assert ledger.record("msg-1", VM.created(10)) is True
    assert ledger.record("msg-1", VM.created(10)) is False

    assert ledger.message_count() == 1
    assert ledger.usage(START, END) == [usage_of(VM, 10)]


def test_a_message_id_racing_in_from_several_threads_counts_once(ledger: Ledger) -> None:
    results: list[bool] = []
    start = threading.Barrier(8)

    def deliver(event: UsageEvent) -> None:
        start.wait()
        results.append(ledger.record("msg-dup", event))

    threads = [threading.Thread(target=deliver, args=(VM.created(10),)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 7 + [True]
    assert ledger.usage(START, END) == [usage_of(VM, 10)]


def test_the_ledger_survives_reopening_and_still_knows_its_message_ids(ledger_path: Path) -> None:
    with Ledger(ledger_path) as first:
        first.record("msg-1", VM.created(10))

    with Ledger(ledger_path) as second:
        assert second.record("msg-1", VM.created(10)) is False
        assert second.usage(START, END) == [usage_of(VM, 10)]


def test_the_ledger_file_is_in_wal_mode(ledger: Ledger, ledger_path: Path) -> None:
    with sqlite3.connect(ledger_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("naive", ["start", "end"])
def test_naive_report_times_are_refused(ledger: Ledger, naive: str) -> None:
    times = {"start": START, "end": END}
    times[naive] = times[naive].replace(tzinfo=None)

    with pytest.raises(ValueError, match=f"{naive} must be timezone-aware"):
        ledger.usage(**times)


def test_naive_event_times_are_refused() -> None:
    with pytest.raises(ValueError, match="launched_at must be timezone-aware"):
        VM.event(VM.created(10).kind, launched_at=dt.datetime(2024, 5, 1))


def test_a_window_ending_before_it_starts_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="before start"):
        ledger.usage(END, START)
