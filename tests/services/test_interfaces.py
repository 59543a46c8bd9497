"""The services' objects and RPC interfaces cannot change without a version bump.

After a deliberate change: bump the VERSION (and record the history in the
module's docstring), then regenerate the table:

    python -m rpclib.fingerprint --objects services.objects \\
        --endpoints services.conductor.manager:ConductorManager \\
        --endpoints services.scheduler.manager:SchedulerManager \\
        --write tests/services/fingerprints.json
"""

from __future__ import annotations

from pathlib import Path

from rpclib.fingerprint import assert_fingerprints, interface_fingerprints, object_fingerprints
from services import objects
from services.conductor.manager import ConductorManager
from services.scheduler.manager import VERSION as SCHEDULER_VERSION
from services.scheduler.manager import SchedulerManager

TABLE = Path(__file__).with_name("fingerprints.json")
SERVICE_OBJECTS = {objects.Flavor.obj_name(), objects.Instance.obj_name()}


def current() -> dict[str, str]:
    table = {k: v for k, v in object_fingerprints().items() if k in SERVICE_OBJECTS}
    table.update(interface_fingerprints([ConductorManager, SchedulerManager]))
    return table


def test_objects_and_interfaces_match_the_recorded_versions() -> None:
    assert_fingerprints(current(), TABLE)


def test_a_changed_interface_without_a_version_bump_is_caught(tmp_path: Path) -> None:
    class ChangedScheduler(SchedulerManager):
        def rebuild(self, ctx: dict[str, object], instance_uuid: str) -> None:
            """A new method, but the interface version is unchanged."""

    table = {k: v for k, v in current().items() if not k.startswith("scheduler@")}
    table.update(interface_fingerprints([ChangedScheduler]))
    try:
        assert_fingerprints(table, TABLE)
    except AssertionError as exc:
        assert f"interface scheduler {SCHEDULER_VERSION}: methods changed" in str(exc)
    else:
        raise AssertionError("a new method at the same version went unnoticed")
