"""Objects newer than the receiver: deferred, backported by an indirection service."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgpack
import pytest

from rpclib.exceptions import IncompatibleObjectVersion, MalformedMessage
from rpclib.serializer import EXT_OBJECT
from tests.objects.support import Release

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Conductor:
    """A fake in-process indirection service running the newest release."""

    def __init__(self, release: Release) -> None:
        self.serializer = release.serializer()
        self.calls: list[tuple[Mapping[str, Any], bytes, dict[str, str]]] = []

    def object_backport_versions(
        self, ctx: Mapping[str, Any], objinst: bytes, object_versions: dict[str, str]
    ) -> bytes:
        self.calls.append((ctx, objinst, object_versions))
        return self.serializer.backport_encoded(objinst, object_versions)


class Answers:
    """An indirection service that answers with canned bytes."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def object_backport_versions(
        self, ctx: Mapping[str, Any], objinst: bytes, object_versions: dict[str, str]
    ) -> Any:
        return self.answer


def new_instance(new: Release, **extra: Any) -> Any:
    flavor = new.Flavor(name="m1", vcpus=2, memory_mb=512, swap=64, rxtx=2.0)
    return new.Instance(uuid=U, hostname="vm", flavor=flavor, progress=7, **extra)


def ext_bytes(obj_data: bytes) -> list[bytes]:
    """The msgpack encodings of every object ext inside ``obj_data`` (outermost first)."""
    found: list[bytes] = []

    def hook(code: int, data: bytes) -> Any:
        if code == EXT_OBJECT:
            found.append(msgpack.packb(msgpack.ExtType(code, data)))
            msgpack.unpackb(data, ext_hook=hook, strict_map_key=False)
        return None

    msgpack.unpackb(obj_data, ext_hook=hook, strict_map_key=False)
    return found


def test_newer_object_is_backported_by_the_indirection_service(old: Release, new: Release) -> None:
    conductor = Conductor(new)
    data = new.serializer().dumps(new_instance(new))
    result = old.serializer(indirection=conductor).loads(data)
    assert type(result) is old.Instance
    assert result.hostname == "vm"
    assert not hasattr(result, "progress")
    assert type(result.flavor) is old.Flavor
    assert result.flavor.swap == 64


def test_indirection_gets_the_object_bytes_exactly_as_they_arrived(
    old: Release, new: Release
) -> None:
    conductor = Conductor(new)
    data = new.serializer().dumps(new_instance(new))
    old.serializer(indirection=conductor).loads(data)
    [(_, objinst, _)] = conductor.calls
    assert objinst == data


def test_indirection_gets_the_receivers_manifest_and_the_context(
    old: Release, new: Release
) -> None:
    conductor = Conductor(new)
    data = new.serializer().dumps(new_instance(new))
    old.serializer(indirection=conductor).loads(data, {"request_id": "r1"})
    [(ctx, _, versions)] = conductor.calls
    assert ctx == {"request_id": "r1"}
    assert versions == old.registry.manifest()
    assert versions["Instance"] == "1.2"


def test_context_defaults_to_an_empty_mapping(old: Release, new: Release) -> None:
    conductor = Conductor(new)
    old.serializer(indirection=conductor).loads(new.serializer().dumps(new_instance(new)))
    assert conductor.calls[0][0] == {}


def test_nested_too_new_object_backports_the_enclosing_object_whole(
    old: Release, new: Release
) -> None:
    conductor = Conductor(new)
    inst = new_instance(new)
    # The Instance itself goes at a version the old side knows; only its Flavor is too new.
    data = new.serializer().dumps({"vm": inst}, {"Instance": "1.2"})
    result = old.serializer(indirection=conductor).loads(data)
    [(_, objinst, _)] = conductor.calls
    assert objinst == ext_bytes(data)[0]  # the Instance, not the Flavor inside it
    assert msgpack.unpackb(msgpack.unpackb(objinst).data)[0] == "Instance"
    assert type(result["vm"]) is old.Instance
    assert type(result["vm"].flavor) is old.Flavor
    assert result["vm"].flavor.swap == 64


def test_too_new_object_deep_inside_objects_backports_the_outermost(
    old: Release, new: Release
) -> None:
    conductor = Conductor(new)
    host = new.Host(name="h", instances=[new_instance(new)])
    cell = new.Cell(name="c", hosts={"h": host})
    data = new.serializer().dumps(cell, {"Instance": "1.2"})
    result = old.serializer(indirection=conductor).loads(data)
    assert len(conductor.calls) == 1
    assert conductor.calls[0][1] == data
    assert type(result.hosts["h"].instances[0].flavor) is old.Flavor


def test_each_too_new_object_in_plain_containers_is_swapped_in_place(
    old: Release, new: Release
) -> None:
    conductor = Conductor(new)
    a, b, c = new_instance(new), new_instance(new), new_instance(new)
    b.hostname, c.hostname = "b", "c"
    payload = {"list": [a, 1], "tuple": ("x", b), "deep": {"k": [[c]]}, "plain": U}
    result = old.serializer(indirection=conductor).loads(new.serializer().dumps(payload))
    assert len(conductor.calls) == 3
    assert type(result["list"][0]) is old.Instance
    assert result["list"][1] == 1
    assert type(result["tuple"]) is tuple
    assert result["tuple"][1].hostname == "b"
    assert result["deep"]["k"][0][0].hostname == "c"
    assert result["plain"] == U


def test_changes_survive_the_backport(old: Release, new: Release) -> None:
    inst = new_instance(new)
    inst.obj_reset_changes(recursive=True)
    inst.hostname = "renamed"
    inst.progress = 9
    result = old.serializer(indirection=Conductor(new)).loads(new.serializer().dumps(inst))
    assert result.obj_what_changed() == {"hostname"}


def test_indirection_is_not_called_when_nothing_is_too_new(old: Release, new: Release) -> None:
    conductor = Conductor(new)
    data = new.serializer().dumps(new_instance(new), {"Instance": "1.2", "Flavor": "1.1"})
    result = old.serializer(indirection=conductor).loads(data)
    assert conductor.calls == []
    assert type(result) is old.Instance


def test_older_objects_decode_without_the_indirection(old: Release, new: Release) -> None:
    conductor = Conductor(old)
    flavor = old.Flavor(name="m", vcpus=1, memory_mb=1)
    result = new.serializer(indirection=conductor).loads(old.serializer().dumps(flavor))
    assert conductor.calls == []
    assert type(result) is new.Flavor
    assert not result.obj_attr_is_set("rxtx")


def test_different_major_is_incompatible_even_with_indirection(old: Release) -> None:
    payload = msgpack.packb(["Flavor", "2.0", {}, []])
    data = msgpack.packb(msgpack.ExtType(EXT_OBJECT, payload))
    with pytest.raises(IncompatibleObjectVersion, match="different major"):
        old.serializer(indirection=Answers(b"")).loads(data)


def test_answer_that_is_still_too_new_is_incompatible(old: Release, new: Release) -> None:
    data = new.serializer().dumps(new_instance(new))
    with pytest.raises(IncompatibleObjectVersion, match="answered with a version still too new"):
        old.serializer(indirection=Answers(data)).loads(data)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("not bytes", "not bytes"),
        (b"\xc1", "malformed"),
        (msgpack.packb([1, 2]), "answered"),
    ],
)
def test_bad_answers_from_the_indirection_are_malformed(
    old: Release, new: Release, answer: Any, problem: str
) -> None:
    data = new.serializer().dumps(new_instance(new))
    with pytest.raises(MalformedMessage, match=problem):
        old.serializer(indirection=Answers(answer)).loads(data)


def test_answer_with_another_object_is_malformed(old: Release, new: Release) -> None:
    other = old.serializer().dumps(old.Flavor(name="m", vcpus=1, memory_mb=1))
    data = new.serializer().dumps(new_instance(new))
    with pytest.raises(MalformedMessage, match="for Instance"):
        old.serializer(indirection=Answers(other)).loads(data)


def test_backport_encoded_reencodes_at_the_given_versions(new: Release) -> None:
    s = new.serializer()
    objinst = s.dumps(new_instance(new))
    answer = s.backport_encoded(objinst, {"Instance": "1.0", "Flavor": "1.0"})
    result = s.loads(answer)
    assert not result.obj_attr_is_set("metadata")
    assert not result.flavor.obj_attr_is_set("swap")


def test_backport_encoded_refuses_non_objects(new: Release) -> None:
    with pytest.raises(MalformedMessage, match="expected an encoded object"):
        new.serializer().backport_encoded(msgpack.packb([1]), {})
