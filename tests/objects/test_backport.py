"""Backporting: since-drops, the obj_make_compatible hook, and manifests at any depth."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from rpclib.exceptions import IncompatibleObjectVersion
from rpclib.objects import Registry, VersionedObject
from rpclib.objects import fields as f
from rpclib.versioning import Version
from tests.objects.support import Release

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


def flavor(release: Release) -> Any:
    return release.Flavor(name="m1", vcpus=2, memory_mb=512, swap=64)


def instance(release: Release, **extra: Any) -> Any:
    return release.Instance(
        uuid=U, hostname="vm", host="h1", flavor=flavor(release), metadata={"a": "b"}, **extra
    )


def wire_fields(release: Release, data: bytes) -> dict[str, Any]:
    """Decode with ``release`` and return the top object's set fields."""
    return release.serializer().loads(data).obj_values()  # type: ignore[no-any-return]


# --- obj_backport ------------------------------------------------------------------------


def test_backport_to_own_version_keeps_every_field(new: Release) -> None:
    obj = instance(new, progress=5)
    assert obj.obj_backport("1.3") == obj.obj_values()


def test_field_added_later_is_dropped_below_its_since_version(new: Release) -> None:
    obj = instance(new, progress=5)
    assert "progress" not in obj.obj_backport("1.2")
    assert "locked" in obj.obj_backport("1.2")


def test_every_field_newer_than_the_target_is_dropped(new: Release) -> None:
    values = instance(new, progress=5).obj_backport("1.0")
    assert set(values) == {"uuid", "hostname", "host", "flavor", "tags"}


def test_obj_make_compatible_runs_after_the_automatic_drops(new: Release) -> None:
    seen: list[tuple[set[str], Version]] = []

    class Spy(new.Instance):  # type: ignore[misc,name-defined]
        OBJ_NAME = "Instance"

        def obj_make_compatible(self, primitive: dict[str, Any], target_version: Version) -> None:
            seen.append((set(primitive), target_version))
            primitive["hostname"] = "edited"

    spy = Spy(uuid=U, hostname="vm", progress=1)
    values = spy.obj_backport("1.1")
    assert seen == [({"uuid", "hostname", "host", "flavor", "tags", "metadata"}, Version(1, 1))]
    assert values["hostname"] == "edited"
    assert spy.hostname == "vm"


def test_obj_make_compatible_is_not_called_at_the_own_version(new: Release) -> None:
    class Spy(new.Instance):  # type: ignore[misc,name-defined]
        OBJ_NAME = "Instance"

        def obj_make_compatible(self, primitive: dict[str, Any], target_version: Version) -> None:
            raise AssertionError("called")

    Spy(uuid=U, hostname="vm").obj_backport("1.3")


def test_hook_can_remove_a_value_for_old_receivers(new: Release) -> None:
    obj = new.Instance(uuid=U, hostname="vm")  # host defaults to None
    assert "host" not in obj.obj_backport("1.1")
    assert obj.obj_backport("1.2")["host"] is None


def test_backport_across_majors_is_refused(new: Release) -> None:
    with pytest.raises(IncompatibleObjectVersion, match="across major versions"):
        instance(new).obj_backport("0.9")


def test_backport_above_the_current_version_is_refused(new: Release) -> None:
    with pytest.raises(IncompatibleObjectVersion, match="newer than the object's own"):
        instance(new).obj_backport("1.4")


# --- manifests through the serializer --------------------------------------------------------


def test_manifest_backports_the_top_object(new: Release) -> None:
    data = new.serializer().dumps(instance(new, progress=5), {"Instance": "1.1"})
    decoded = wire_fields(new, data)
    assert "progress" not in decoded
    assert "locked" not in decoded
    assert decoded["metadata"] == {"a": "b"}


def test_manifest_backports_a_nested_object(new: Release) -> None:
    data = new.serializer().dumps(instance(new), {"Flavor": "1.0"})
    decoded = new.serializer().loads(data)
    assert not decoded.flavor.obj_attr_is_set("swap")
    assert decoded.obj_attr_is_set("locked")  # Instance not in the manifest: sent as is


def test_manifest_backports_objects_at_any_depth(new: Release) -> None:
    host = new.Host(name="h", instances=[instance(new), instance(new)])
    cell = new.Cell(name="c", hosts={"h": host}, primary=host)
    payload = {"cells": [cell], "pair": (host, 1)}
    data = new.serializer().dumps(payload, {"Flavor": "1.0", "Instance": "1.0"})
    decoded = new.serializer().loads(data)
    inst_seen = [
        *decoded["cells"][0].hosts["h"].instances,
        *decoded["cells"][0].primary.instances,
        *decoded["pair"][0].instances,
    ]
    assert len(inst_seen) == 6
    for inst in inst_seen:
        assert not inst.obj_attr_is_set("metadata")
        assert not inst.flavor.obj_attr_is_set("swap")


def test_manifest_version_is_what_goes_on_the_wire(new: Release, old: Release) -> None:
    data = new.serializer().dumps(instance(new), {"Instance": "1.2", "Flavor": "1.1"})
    decoded = old.serializer().loads(data)  # old knows Instance 1.2 / Flavor 1.1 at most
    assert isinstance(decoded, old.Instance)
    assert decoded.flavor.swap == 64


def test_manifest_entry_at_or_above_own_version_leaves_the_object_alone(new: Release) -> None:
    obj = instance(new, progress=5)
    plain = new.serializer().dumps(obj)
    assert new.serializer().dumps(obj, {"Instance": "1.3", "Flavor": "1.9"}) == plain


def test_manifest_backport_across_majors_fails_encoding(new: Release) -> None:
    with pytest.raises(IncompatibleObjectVersion, match="across major"):
        new.serializer().dumps(instance(new), {"Flavor": "0.5"})


def test_backport_keeps_only_changes_of_fields_still_sent(new: Release) -> None:
    obj = instance(new, progress=5)
    obj.obj_reset_changes(recursive=True)
    obj.progress = 6
    obj.hostname = "changed"
    decoded = new.serializer().loads(new.serializer().dumps(obj, {"Instance": "1.2"}))
    assert decoded.obj_what_changed() == {"hostname"}


def test_backport_does_not_touch_the_original_object(new: Release) -> None:
    obj = instance(new, progress=5)
    before = obj.obj_values()
    new.serializer().dumps(obj, {"Instance": "1.0", "Flavor": "1.0"})
    assert obj.obj_values() == before
    assert obj.flavor.swap == 64


def test_class_without_since_fields_backports_unchanged_within_major() -> None:
    registry = Registry()

    @registry.register
    class Plain(VersionedObject):
        VERSION = "1.5"
        fields = {"a": f.Integer()}

    assert Plain(a=1).obj_backport("1.0") == {"a": 1}
