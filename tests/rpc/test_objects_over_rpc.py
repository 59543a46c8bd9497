"""Versioned objects between servers of different ages."""

from __future__ import annotations

from typing import Any

import pytest

import rpclib
from rpclib.dispatcher import Dispatcher
from rpclib.indirection import ObjectBackportEndpoint, RPCIndirection
from rpclib.objects import Registry, VersionedObject, fields
from rpclib.versioning import parse_version
from tests.rpc.helpers import WAIT, Recorder, serve, stop

OLD, NEW = Registry(), Registry()


class FlavorV10(VersionedObject):
    OBJ_NAME = "Flavor"
    VERSION = "1.0"
    fields = {"vcpus": fields.Integer(), "memory_mb": fields.Integer()}


class FlavorV11(VersionedObject):
    OBJ_NAME = "Flavor"
    VERSION = "1.1"
    fields = {
        "vcpus": fields.Integer(),
        "memory_mb": fields.Integer(),
        "swap_mb": fields.Integer(default=0, since="1.1"),
    }


OLD.register(FlavorV10)
NEW.register(FlavorV11)


class OldCompute(Recorder):
    def build(self, ctx: dict[str, Any], flavor: FlavorV10) -> None:
        self.record("build", flavor=flavor)


def test_auto_cap_backports_objects_to_what_live_servers_know(transport: rpclib.Transport) -> None:
    old = OldCompute()
    server = serve(transport, [old], serializer=rpclib.Serializer(OLD))
    client = rpclib.RPCClient(
        transport, rpclib.Target(topic="svc"), version_cap="auto", serializer=rpclib.Serializer(NEW)
    )
    try:
        client.cast({}, "build", flavor=FlavorV11(vcpus=2, memory_mb=512, swap_mb=128))
        _, seen = old.next()
        flavor = seen["flavor"]
        assert type(flavor) is FlavorV10
        assert (flavor.vcpus, flavor.memory_mb) == (2, 512)
    finally:
        stop(server)


def test_newer_object_is_backported_through_the_indirection_service(
    make_transport: Any,
) -> None:
    conductor_t, compute_t, caller_t = make_transport(), make_transport(), make_transport()
    conductor = serve(
        conductor_t,
        [ObjectBackportEndpoint(rpclib.Serializer(NEW))],
        topic="conductor",
        server="c1",
    )
    indirection = RPCIndirection(compute_t, rpclib.Target(topic="conductor"), timeout=WAIT)
    old = OldCompute()
    compute = serve(compute_t, [old], serializer=rpclib.Serializer(OLD, indirection=indirection))
    try:
        # no version cap: the caller sends its newest Flavor, 1.1
        caller = rpclib.RPCClient(
            caller_t, rpclib.Target(topic="svc"), serializer=rpclib.Serializer(NEW)
        )
        caller.cast({}, "build", flavor=FlavorV11(vcpus=4, memory_mb=1024, swap_mb=64))
        _, seen = old.next()
        assert type(seen["flavor"]) is FlavorV10
        assert (seen["flavor"].vcpus, seen["flavor"].memory_mb) == (4, 1024)
    finally:
        stop(compute, conductor)


def test_newer_object_without_indirection_is_a_clear_error(transport: rpclib.Transport) -> None:
    server = serve(transport, [OldCompute()], serializer=rpclib.Serializer(OLD))
    try:
        caller = rpclib.RPCClient(
            transport, rpclib.Target(topic="svc"), serializer=rpclib.Serializer(NEW), timeout=WAIT
        )
        try:
            caller.call({}, "build", flavor=FlavorV11(vcpus=1, memory_mb=1))
        except rpclib.IncompatibleObjectVersion as exc:
            assert "Flavor version 1.1" in str(exc)
        else:
            raise AssertionError("an old server decoded an object newer than it knows")
    finally:
        stop(server)


def test_unknown_object_class_is_reported_to_the_caller(transport: rpclib.Transport) -> None:
    server = serve(transport, [OldCompute()], serializer=rpclib.Serializer(Registry()))
    try:
        caller = rpclib.RPCClient(
            transport, rpclib.Target(topic="svc"), serializer=rpclib.Serializer(NEW), timeout=WAIT
        )
        try:
            caller.call({}, "build", flavor=FlavorV11(vcpus=1, memory_mb=1))
        except rpclib.UnknownObject as exc:
            assert exc.name == "Flavor"
        else:
            raise AssertionError("unknown class was not reported")
    finally:
        stop(server)


def test_wrong_field_type_in_an_arriving_object_is_reported(transport: rpclib.Transport) -> None:
    lax = Registry()

    class FlavorLax(VersionedObject):
        OBJ_NAME = "Flavor"
        VERSION = "1.0"
        fields = {"vcpus": fields.String(), "memory_mb": fields.Integer()}

    lax.register(FlavorLax)
    server = serve(transport, [OldCompute()], serializer=rpclib.Serializer(OLD))
    try:
        caller = rpclib.RPCClient(
            transport, rpclib.Target(topic="svc"), serializer=rpclib.Serializer(lax), timeout=WAIT
        )
        try:
            caller.call({}, "build", flavor=FlavorLax(vcpus="two", memory_mb=1))
        except rpclib.MessagingError as exc:
            assert "vcpus" in str(exc)
        else:
            raise AssertionError("a mistyped field was accepted")
    finally:
        stop(server)


class NewFlavors:
    """A server on this release's objects; ``reply_object_versions`` as an endpoint declares it."""

    target = rpclib.Target(version="1.1")
    reply_object_versions = {"1.0": {"Flavor": "1.0"}}

    def flavor(self, ctx: dict[str, Any]) -> FlavorV11:
        return FlavorV11(vcpus=4, memory_mb=1024, swap_mb=256)


def test_a_reply_is_backported_to_the_object_versions_its_caller_states(
    transport: rpclib.Transport,
) -> None:
    server = serve(transport, [NewFlavors()], serializer=rpclib.Serializer(NEW))
    old_caller = rpclib.RPCClient(
        transport, rpclib.Target(topic="svc", version="1.1"), serializer=rpclib.Serializer(OLD)
    )
    try:
        flavor = old_caller.call({}, "flavor")
        assert type(flavor) is FlavorV10
        assert (flavor.vcpus, flavor.memory_mb) == (4, 1024)
    finally:
        stop(server)


def test_a_caller_too_old_to_state_object_versions_gets_what_its_interface_version_carried() -> (
    None
):
    # rpclib before the ``ov`` header; end to end with real old code in tests/upgrades.
    dispatcher = Dispatcher([NewFlavors()])
    at_10 = dispatcher.lookup(None, "1.0", "flavor")
    assert at_10.reply_manifest(parse_version("1.0")) == {"Flavor": "1.0"}
    assert at_10.reply_manifest(parse_version("1.1")) is None  # today's objects


def test_a_malformed_reply_object_versions_declaration_is_named() -> None:
    class Bad:
        reply_object_versions = {"1.0": "Flavor"}

        def flavor(self, ctx: dict[str, Any]) -> None: ...

    with pytest.raises(ValueError, match=r"Bad.reply_object_versions\['1.0'\] must map"):
        Dispatcher([Bad()])
