"""Building blocks for billing tests: times, instances, events and payloads."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from services.billing import EventKind, Ledger, UsageEvent
from services.notifications import InstancePayload, instance_payload

WAIT = 10.0
T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
_ids = itertools.count(1)


def hours(h: float) -> dt.datetime:
    """``h`` hours after T0 (2024-05-01 00:00 UTC)."""
    return T0 + dt.timedelta(hours=h)


@dataclass(frozen=True)
class Instance:
    """An instance's identity and sizes, from which events are built."""

    project_id: str = "proj-a"
    vcpus: int = 2
    memory_mb: int = 1024
    disk_gb: int = 10
    uuid: str = ""

    def __post_init__(self) -> None:
        if not self.uuid:
            object.__setattr__(self, "uuid", str(uuid.uuid4()))

    def event(self, kind: EventKind, **times: dt.datetime) -> UsageEvent:
        return UsageEvent(
            kind=kind,
            instance_uuid=self.uuid,
            project_id=self.project_id,
            vcpus=self.vcpus,
            memory_mb=self.memory_mb,
            disk_gb=self.disk_gb,
            **times,
        )

    def created(self, at: float) -> UsageEvent:
        return self.event(EventKind.CREATE_END, launched_at=hours(at))

    def deleted(self, at: float) -> UsageEvent:
        return self.event(EventKind.DELETE_END, deleted_at=hours(at))

    def exists(self, start: float, end: float) -> UsageEvent:
        return self.event(
            EventKind.EXISTS, audit_period_start=hours(start), audit_period_end=hours(end)
        )

    def payload(self, event: UsageEvent) -> InstancePayload:
        """The payload the services would send for ``event``."""
        audit = {}
        if event.kind is EventKind.EXISTS:
            audit = {
                "audit_period_start": event.audit_period_start,
                "audit_period_end": event.audit_period_end,
            }
        return instance_payload(
            instance_uuid=self.uuid,
            name=f"vm-{self.uuid[:8]}",
            project_id=self.project_id,
            user_id="user-1",
            host="compute1",
            vcpus=self.vcpus,
            memory_mb=self.memory_mb,
            disk_gb=self.disk_gb,
            vm_state="deleted" if event.kind is EventKind.DELETE_END else "active",
            launched_at=event.launched_at,
            deleted_at=event.deleted_at,
            **audit,
        )


def record(ledger: Ledger, *events: UsageEvent) -> None:
    """Record each event under a fresh message id."""
    for event in events:
        assert ledger.record(f"msg-{next(_ids)}", event)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
