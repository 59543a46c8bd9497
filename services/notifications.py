"""Notification event types and payloads the services emit (and billing reads).

Publisher ids are ``conductor.<host>`` or ``compute.<host>``; the topic is
``notifications``; priority ``info`` for these events. Payloads are plain maps
(datetimes tz-aware UTC) so any listener can read them without the services'
object classes.

- ``instance.create.start`` / ``instance.create.end``: an instance was placed /
  became ACTIVE. ``launched_at`` is set on ``.end``.
- ``instance.delete.end``: the instance is gone; ``deleted_at`` is set.
- ``instance.exists``: periodic audit from the conductor, one per instance
  alive during [``audit_period_start``, ``audit_period_end``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

TOPIC = "notifications"
CREATE_START = "instance.create.start"
CREATE_END = "instance.create.end"
DELETE_END = "instance.delete.end"
EXISTS = "instance.exists"


class InstancePayload(TypedDict, total=False):
    """What every instance notification carries."""

    instance_uuid: str
    name: str
    project_id: str
    user_id: str
    host: str | None
    vcpus: int
    memory_mb: int
    disk_gb: int
    vm_state: str
    launched_at: dt.datetime | None
    deleted_at: dt.datetime | None
    audit_period_start: dt.datetime
    audit_period_end: dt.datetime


def instance_payload(
    *,
    instance_uuid: str,
    name: str,
    project_id: str,
    user_id: str,
    host: str | None,
    vcpus: int,
    memory_mb: int,
    disk_gb: int,
    vm_state: str,
    launched_at: dt.datetime | None = None,
    deleted_at: dt.datetime | None = None,
    **audit: Any,
) -> InstancePayload:
    """Build a payload, refusing naive datetimes (billing needs unambiguous times)."""
    for key, value in (("launched_at", launched_at), ("deleted_at", deleted_at), *audit.items()):
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            raise ValueError(f"{key} must be timezone-aware (UTC)")
    payload: InstancePayload = {
        "instance_uuid": instance_uuid,
        "name": name,
        "project_id": project_id,
        "user_id": user_id,
        "host": host,
        "vcpus": vcpus,
        "memory_mb": memory_mb,
        "disk_gb": disk_gb,
        "vm_state": vm_state,
        "launched_at": launched_at,
        "deleted_at": deleted_at,
    }
    payload.update(audit)  # type: ignore[typeddict-item]
    return payload
