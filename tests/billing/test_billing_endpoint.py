"""The endpoint: which events it records, ignores, and refuses (naming the field)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from services.billing import BillingEndpoint, EndpointStats, Ledger, MalformedPayload
from services.notifications import CREATE_END, CREATE_START, DELETE_END, EXISTS
from tests.billing.support import Instance, hours

VM = Instance(project_id="proj-a", vcpus=2, memory_mb=1024, disk_gb=10)


def deliver(
    endpoint: BillingEndpoint, event_type: str, payload: Any, message_id: str = "m1"
) -> None:
    endpoint.info({}, "conductor.host1", event_type, payload, {"message_id": message_id})


def test_create_delete_and_exists_are_recorded(ledger: Ledger) -> None:
    endpoint = BillingEndpoint(ledger)

    deliver(endpoint, CREATE_END, VM.payload(VM.created(10)), "m1")
    deliver(endpoint, EXISTS, VM.payload(VM.exists(10, 12)), "m2")
    deliver(endpoint, DELETE_END, VM.payload(VM.deleted(12)), "m3")

    assert endpoint.stats == EndpointStats(recorded=3)
    assert [u.vcpu_hours for u in ledger.usage(hours(0), hours(24))] == [4.0]


def test_other_instance_events_are_ignored_and_counted(ledger: Ledger) -> None:
    endpoint = BillingEndpoint(ledger)

    deliver(endpoint, CREATE_START, {"whatever": 1})
    deliver(endpoint, "instance.power_off.end", VM.payload(VM.created(10)))

    assert endpoint.stats == EndpointStats(ignored=2)
    assert ledger.message_count() == 0


def test_a_redelivered_message_is_counted_as_a_duplicate(ledger: Ledger) -> None:
    endpoint = BillingEndpoint(ledger)

    deliver(endpoint, CREATE_END, VM.payload(VM.created(10)), "m1")
    deliver(endpoint, CREATE_END, VM.payload(VM.created(10)), "m1")

    assert endpoint.stats == EndpointStats(recorded=1, duplicates=1)


def test_the_endpoint_filters_on_instance_events() -> None:
    rule = BillingEndpoint.filter_rule

    assert rule.match({}, "conductor.host1", "instance.create.end", {})
    assert not rule.match({}, "conductor.host1", "volume.create.end", {})


def test_a_uuid_object_is_accepted_as_the_instance_uuid(ledger: Ledger) -> None:
    ident = uuid.uuid4()
    payload = dict(VM.payload(VM.created(10)), instance_uuid=ident)

    deliver(BillingEndpoint(ledger), CREATE_END, payload)

    assert ledger.usage(hours(10), hours(11))[0].instances == 1


def _without(payload: Any, key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


@pytest.mark.parametrize(
    ("event_type", "change", "field"),
    [
        (CREATE_END, lambda p: _without(p, "vcpus"), "vcpus"),
        (CREATE_END, lambda p: dict(p, vcpus="two"), "vcpus"),
        (CREATE_END, lambda p: dict(p, memory_mb=True), "memory_mb"),
        (CREATE_END, lambda p: dict(p, disk_gb=-1), "disk_gb"),
        (CREATE_END, lambda p: dict(p, project_id=None), "project_id"),
        (CREATE_END, lambda p: _without(p, "instance_uuid"), "instance_uuid"),
        (CREATE_END, lambda p: dict(p, launched_at=None), "launched_at"),
        (CREATE_END, lambda p: dict(p, launched_at=dt.datetime(2024, 5, 1)), "launched_at"),
        (DELETE_END, lambda p: dict(p, deleted_at="2024-05-01T00:00:00Z"), "deleted_at"),
        (EXISTS, lambda p: _without(p, "audit_period_start"), "audit_period_start"),
        (EXISTS, lambda p: dict(p, audit_period_end=p["audit_period_start"]), "audit_period_end"),
        (EXISTS, lambda p: [p], "payload"),
    ],
)
def test_a_malformed_payload_raises_naming_the_field(
    ledger: Ledger, event_type: str, change: Any, field: str
) -> None:
    valid = {
        CREATE_END: VM.created(10),
        DELETE_END: VM.deleted(12),
        EXISTS: VM.exists(10, 12),
    }[event_type]
    endpoint = BillingEndpoint(ledger)

    with pytest.raises(MalformedPayload, match=f"{event_type} payload field '{field}'") as err:
        deliver(endpoint, event_type, change(VM.payload(valid)))

    assert err.value.field == field
    assert ledger.message_count() == 0
