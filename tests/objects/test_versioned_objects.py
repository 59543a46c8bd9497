"""Versioned objects: construction, attribute access, change tracking, registry."""

from __future__ import annotations

import copy
import pickle
import uuid
from typing import Any

import pytest

from rpclib.exceptions import FieldNotSet, FieldTypeError, UnknownObject
from rpclib.objects import Registry, VersionedObject, default_registry, register
from rpclib.objects import fields as f
from rpclib.versioning import Version
from tests.objects.support import Release

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Point(VersionedObject):
    VERSION = "1.4"
    fields = {
        "x": f.Integer(),
        "y": f.Integer(default=0),
        "label": f.String(nullable=True),
        "tags": f.List(f.String(), default=[]),
    }


# --- construction and access ------------------------------------------------------


def test_constructor_sets_fields_through_the_type_check() -> None:
    with pytest.raises(FieldTypeError, match=r"Point\.x expects int, got str"):
        Point(x="1")


def test_constructor_applies_defaults_for_unset_fields() -> None:
    p = Point(x=1)
    assert p.y == 0
    assert p.tags == []
    assert p.obj_attr_is_set("y")


def test_constructor_value_wins_over_default() -> None:
    assert Point(x=1, y=5).y == 5


def test_unknown_constructor_field_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"unexpected field 'z'.*fields: x, y, label, tags"):
        Point(x=1, z=2)


def test_reading_an_unset_field_without_default_raises_field_not_set() -> None:
    p = Point(x=1)
    with pytest.raises(FieldNotSet, match=r"Point\.label is not set"):
        _ = p.label
    assert not hasattr(p, "label")  # FieldNotSet is an AttributeError


def test_reading_an_unset_field_with_default_gives_the_default() -> None:
    p = Point.__new__(Point)  # as if decoded from an old version that lacked the fields
    assert p.y == 0
    p.tags.append("kept")
    assert p.tags == ["kept"]


def test_mutable_defaults_are_not_shared_between_instances() -> None:
    a, b = Point(x=1), Point(x=2)
    a.tags.append("a")
    assert b.tags == []


def test_assignment_is_type_checked_and_normalised() -> None:
    p = Point(x=1)
    with pytest.raises(FieldTypeError, match=r"Point\.y expects int, got bool"):
        p.y = True
    p.tags = ("a", "b")
    assert p.tags == ["a", "b"]


def test_failed_assignment_leaves_the_old_value_and_no_change() -> None:
    p = Point(x=1)
    p.obj_reset_changes()
    with pytest.raises(FieldTypeError):
        p.x = "2"
    assert p.x == 1
    assert p.obj_what_changed() == set()


def test_assigning_an_unknown_public_attribute_is_an_error() -> None:
    p = Point(x=1)
    with pytest.raises(AttributeError, match="Point has no field 'xx'"):
        p.xx = 1


def test_private_attributes_are_allowed_and_not_fields() -> None:
    p = Point(x=1)
    p._context = {"user": "u"}
    assert p._context == {"user": "u"}
    assert p.obj_values() == {"x": 1, "y": 0, "tags": []}
    assert p == Point(x=1)


def test_obj_attr_is_set_rejects_unknown_names() -> None:
    with pytest.raises(AttributeError, match="no field 'nope'"):
        Point(x=1).obj_attr_is_set("nope")


def test_obj_values_is_a_copy_of_the_set_fields() -> None:
    p = Point(x=1)
    values = p.obj_values()
    values["x"] = "changed"
    assert p.x == 1
    assert "label" not in values


def test_fields_are_inherited_and_extended() -> None:
    class Point3(Point):
        VERSION = "1.0"
        fields = {"z": f.Integer(default=0)}

    p = Point3(x=1)
    assert (p.x, p.y, p.z) == (1, 0, 0)
    assert list(Point3.fields) == ["x", "y", "label", "tags", "z"]
    assert Point3.obj_name() == "Point3"


# --- class definition errors ----------------------------------------------------------


def test_obj_name_defaults_to_the_class_name_and_can_be_overridden() -> None:
    class Renamed(VersionedObject):
        OBJ_NAME = "Wire"
        fields = {}

    assert Point.obj_name() == "Point"
    assert Renamed.obj_name() == "Wire"


def test_bad_version_is_rejected_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"VERSION.*MAJOR\.MINOR"):

        class Bad(VersionedObject):
            VERSION = "1"


def test_since_above_version_is_rejected_at_class_definition() -> None:
    with pytest.raises(TypeError, match="since='1.3' must be within version 1.x and not above"):

        class Bad(VersionedObject):
            VERSION = "1.2"
            fields = {"a": f.String(since="1.3")}


@pytest.mark.parametrize("name", ["fields", "obj_what_changed", "VERSION", "_hidden", "not-id"])
def test_field_names_that_clash_or_are_not_public_identifiers_are_rejected(name: str) -> None:
    with pytest.raises(TypeError, match=r"fields\["):
        type("Bad", (VersionedObject,), {"fields": {name: f.String()}})


def test_field_name_clashing_with_a_method_is_rejected() -> None:
    with pytest.raises(TypeError, match="clashes"):

        class Bad(VersionedObject):
            fields = {"save": f.String()}

            def save(self) -> None:
                pass


def test_non_field_values_in_fields_are_rejected() -> None:
    with pytest.raises(TypeError, match="must be a Field instance"):
        type("Bad", (VersionedObject,), {"fields": {"a": str}})


# --- change tracking ----------------------------------------------------------------------


def test_new_object_reports_every_set_field_as_changed() -> None:
    assert Point(x=1).obj_what_changed() == {"x", "y", "tags"}


def test_assignment_marks_the_field_changed() -> None:
    p = Point(x=1)
    p.obj_reset_changes()
    p.y = 3
    assert p.obj_what_changed() == {"y"}


def test_reset_changes_of_some_fields_keeps_the_others() -> None:
    p = Point(x=1, label="a")
    p.obj_reset_changes(["x", "label"])
    assert p.obj_what_changed() == {"y", "tags"}


def test_reset_changes_rejects_unknown_fields() -> None:
    with pytest.raises(AttributeError, match="no field"):
        Point(x=1).obj_reset_changes(["nope"])


def test_materialising_a_default_on_read_is_not_a_change() -> None:
    p = Point.__new__(Point)
    _ = p.y
    assert p.obj_what_changed() == set()


def test_nested_object_change_shows_on_the_parent(old: Release) -> None:
    inst = old.Instance(uuid=U, hostname="h", flavor=old.Flavor(name="m", vcpus=1, memory_mb=1))
    inst.obj_reset_changes(recursive=True)
    inst.flavor.vcpus = 2
    assert inst.obj_what_changed() == {"flavor"}
    assert inst.flavor.obj_what_changed() == {"vcpus"}


def test_change_of_an_object_inside_a_list_or_dict_shows_on_the_parent(old: Release) -> None:
    inst = old.Instance(uuid=U, hostname="h")
    cell = old.Cell(name="c", hosts={"h1": old.Host(name="h1", instances=[inst])})
    cell.obj_reset_changes(recursive=True)
    assert cell.obj_what_changed() == set()
    inst.hostname = "renamed"
    assert cell.obj_what_changed() == {"hosts"}
    assert cell.hosts["h1"].obj_what_changed() == {"instances"}


def test_non_recursive_reset_keeps_nested_changes(old: Release) -> None:
    inst = old.Instance(uuid=U, hostname="h", flavor=old.Flavor(name="m", vcpus=1, memory_mb=1))
    inst.obj_reset_changes()
    assert inst.obj_what_changed() == {"flavor"}  # the flavor itself is still all changed
    inst.obj_reset_changes(recursive=True)
    assert inst.obj_what_changed() == set()
    assert inst.flavor.obj_what_changed() == set()


def test_recursive_reset_of_named_fields_only_touches_those(old: Release) -> None:
    host = old.Host(name="h", instances=[old.Instance(uuid=U, hostname="h")])
    cell = old.Cell(name="c", primary=host, hosts={"h": old.Host(name="x")})
    cell.obj_reset_changes(["primary"], recursive=True)
    assert host.obj_what_changed() == set()
    assert host.instances[0].obj_what_changed() == set()
    assert cell.hosts["h"].obj_what_changed() == {"name", "instances"}


# --- equality, repr, copies ------------------------------------------------------------------


def test_equality_is_by_class_and_field_values_not_changes() -> None:
    a, b = Point(x=1), Point(x=1)
    b.obj_reset_changes()
    assert a == b
    b.y = 9
    assert a != b


def test_objects_of_different_classes_are_not_equal() -> None:
    class Other(VersionedObject):
        VERSION = "1.4"
        fields = Point.fields

    assert Point(x=1) != Other(x=1)


def test_unset_and_set_fields_make_objects_unequal() -> None:
    assert Point(x=1) != Point(x=1, label=None)


def test_objects_are_unhashable() -> None:
    with pytest.raises(TypeError):
        hash(Point(x=1))


def test_repr_shows_name_version_and_set_fields_in_declaration_order() -> None:
    assert repr(Point(label="l", x=1)) == "Point@1.4(x=1, y=0, label='l', tags=[])"


def test_repr_survives_a_reference_cycle() -> None:
    class Node(VersionedObject):
        fields = {"next": f.Object("Node", nullable=True)}

    n = Node(next=None)
    n.next = n
    assert repr(n) == "Node@1.0(next=...)"


def test_copies_and_pickles_keep_values_and_changes() -> None:
    p = Point(x=1)
    p.obj_reset_changes(["tags"])
    for clone in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert clone == p
        assert clone.obj_what_changed() == {"x", "y"}
    deep = copy.deepcopy(p)
    deep.tags.append("only here")
    assert p.tags == []


# --- registry -------------------------------------------------------------------------------


def test_registry_get_and_manifest() -> None:
    registry = Registry()
    registry.register(Point)
    assert registry.get("Point") is Point
    assert registry.manifest() == {"Point": "1.4"}
    assert "Point" in registry
    assert list(registry) == [Point]


def test_registry_unknown_name_raises_unknown_object() -> None:
    with pytest.raises(UnknownObject, match="'Nope'"):
        Registry().get("Nope")


def test_reregistering_a_name_replaces_the_class_and_updates_the_manifest() -> None:
    registry = Registry()
    registry.register(Point)
    replacement = type("Point", (VersionedObject,), {"VERSION": "1.5", "fields": {}})
    registry.register(replacement)
    assert registry.get("Point") is replacement
    assert registry.manifest() == {"Point": "1.5"}


def test_manifest_is_a_copy() -> None:
    registry = Registry()
    registry.register(Point)
    registry.manifest()["Point"] = "9.9"
    assert registry.manifest() == {"Point": "1.4"}


def test_only_versioned_object_classes_can_be_registered() -> None:
    with pytest.raises(TypeError, match="only VersionedObject subclasses"):
        Registry().register(dict)  # type: ignore[type-var]


def test_register_decorator_uses_the_default_registry() -> None:
    @register
    class DefaultRegistered(VersionedObject):
        VERSION = "2.1"
        fields = {}

    try:
        assert default_registry.get("DefaultRegistered") is DefaultRegistered
        assert default_registry.manifest()["DefaultRegistered"] == "2.1"
    finally:
        default_registry.unregister("DefaultRegistered")


def test_obj_version_is_parsed() -> None:
    assert Point.obj_version() == Version(1, 4)


def test_obj_make_compatible_default_is_a_no_op() -> None:
    primitive: dict[str, Any] = {"x": 1}
    Point(x=1).obj_make_compatible(primitive, Version(1, 0))
    assert primitive == {"x": 1}
