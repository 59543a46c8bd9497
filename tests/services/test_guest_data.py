"""SSH keys and user data given at boot: checked first, stored, sent to compute (backported)."""

from __future__ import annotations

import base64
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

import rpclib
from rpclib.objects import Registry, VersionedObject, fields
from services.cli import main
from services.common import guestdata
from services.common.guestdata import BadGuestData
from services.compute.rpcapi import ComputeAPI
from services.conductor.db import ConductorDB, create_engine, migrations
from services.conductor.manager import ConductorManager
from services.conductor.rpcapi import ConductorAPI
from services.objects import VM_STATES, Flavor, Instance
from services.scheduler.manager import SchedulerManager
from services.scheduler.rpcapi import SchedulerAPI
from tests.services.conftest import Conductor

CTX: dict[str, Any] = {"request_id": "req-guest"}
REQUEST = {
    "name": "vm",
    "vcpus": 1,
    "memory_mb": 256,
    "disk_gb": 1,
    "image": "/images/cirros.qcow2",
}


def public_key(comment: str = "user@example") -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + f" {comment}"


# What a compute node one release behind knows: Instance 1.1 (no key_data, no user_data).
PREVIOUS = Registry()


@PREVIOUS.register
class FlavorV11(VersionedObject):
    OBJ_NAME = "Flavor"
    VERSION = "1.1"
    fields = dict(Flavor.fields)  # type: ignore[attr-defined]


@PREVIOUS.register
class InstanceV11(VersionedObject):
    OBJ_NAME = "Instance"
    VERSION = "1.1"
    fields = {
        name: field
        for name, field in Instance.fields.items()  # type: ignore[attr-defined]
        if name not in ("key_data", "user_data")
    } | {"flavor": fields.Object("Flavor"), "vm_state": fields.Enum(VM_STATES, default="BUILDING")}


class RecordingCompute:
    """A compute node's endpoint that keeps the builds it receives."""

    target = rpclib.Target(namespace="compute", version="1.1")

    def __init__(self) -> None:
        self.builds: queue.Queue[dict[str, Any]] = queue.Queue()

    def build_instance(self, ctx: dict[str, Any], **kwargs: Any) -> None:
        self.builds.put(kwargs)


@pytest.fixture
def scheduler(transport: rpclib.Transport, conductor: Conductor) -> Iterator[SchedulerAPI]:
    manager = SchedulerManager(ConductorAPI(transport), ComputeAPI(transport))
    server = rpclib.RPCServer(transport, rpclib.Target(topic="scheduler", server="s1"), [manager])
    server.start()
    yield SchedulerAPI(transport, timeout=10)
    server.stop()
    server.wait(10)


def compute_node(
    transport: rpclib.Transport, api: ConductorAPI, host: str, registry: Registry | None
) -> tuple[RecordingCompute, rpclib.RPCServer]:
    api.register_compute(CTX, host, 4, 8192, 100, {"compute": "1.1"})
    node = RecordingCompute()
    serializer = rpclib.Serializer(registry) if registry is not None else None
    server = rpclib.RPCServer(
        transport, rpclib.Target(topic="compute", server=host), [node], serializer=serializer
    )
    server.start()
    return node, server


# -- the checks -----------------------------------------------------------------------------


def test_a_generated_openssh_key_is_accepted_as_one_line() -> None:
    key = public_key()
    assert guestdata.check_public_key(f"  {key}\n") == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ssh-ed25519 not-base64!!",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",  # truncated
        "hello world",
    ],
)
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(BadGuestData):
        guestdata.check_public_key(text)


def test_a_private_key_is_refused_with_a_hint() -> None:
    private = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
    )
    with pytest.raises(BadGuestData, match="one line|not the private key"):
        guestdata.check_public_key(private.decode())


def test_user_data_is_base64_and_bounded() -> None:
    assert guestdata.decode_user_data(guestdata.encode_user_data(b"#!/bin/sh\n")) == b"#!/bin/sh\n"
    limit = guestdata.MAX_USER_DATA // 4 * 3  # the most bytes whose base64 fits
    assert len(guestdata.encode_user_data(b"x" * limit)) <= guestdata.MAX_USER_DATA
    with pytest.raises(BadGuestData, match="more than the 65535 allowed"):
        guestdata.encode_user_data(b"x" * (limit + 1))
    with pytest.raises(BadGuestData, match="base64"):
        guestdata.check_user_data("not base64 at all!")


# -- through the services -------------------------------------------------------------------


def test_boot_stores_the_key_and_user_data_with_the_instance(
    transport: rpclib.Transport, scheduler: SchedulerAPI, api: ConductorAPI
) -> None:
    node, server = compute_node(transport, api, "c1", None)
    key = public_key()
    user_data = base64.b64encode(b"#cloud-config\n").decode()
    try:
        placed = scheduler.boot(CTX, **REQUEST, key_data=key, user_data=user_data)
        stored = api.get_instance(CTX, str(placed.uuid))
        assert (stored.key_data, stored.user_data) == (key, user_data)
        build = node.builds.get(timeout=10)["instance"]
        assert (build.key_data, build.user_data) == (key, user_data)
    finally:
        server.stop()
        server.wait(10)


def test_listings_leave_the_user_data_out(
    transport: rpclib.Transport, scheduler: SchedulerAPI, api: ConductorAPI
) -> None:
    _node, server = compute_node(transport, api, "c1", None)
    try:
        scheduler.boot(CTX, **REQUEST, key_data=public_key(), user_data="eA==")
        (listed,) = api.list_instances(CTX)
        assert listed.key_data is not None and listed.user_data is None
        assert api.get_instance(CTX, str(listed.uuid)).user_data == "eA=="
    finally:
        server.stop()
        server.wait(10)


def test_an_instance_booted_without_them_has_none(
    transport: rpclib.Transport, scheduler: SchedulerAPI, api: ConductorAPI
) -> None:
    _node, server = compute_node(transport, api, "c1", None)
    try:
        placed = scheduler.boot(CTX, **REQUEST)
        stored = api.get_instance(CTX, str(placed.uuid))
        assert (stored.key_data, stored.user_data) == (None, None)
    finally:
        server.stop()
        server.wait(10)


def test_a_compute_node_one_release_behind_gets_the_build_without_them(
    transport: rpclib.Transport, scheduler: SchedulerAPI, api: ConductorAPI
) -> None:
    node, server = compute_node(transport, api, "old", PREVIOUS)
    try:
        scheduler.boot(CTX, **REQUEST, key_data=public_key(), user_data="eA==")
        build = node.builds.get(timeout=10)["instance"]
        assert type(build) is InstanceV11  # backported to the version the node knows
        assert not hasattr(build, "key_data") and not hasattr(build, "user_data")
    finally:
        server.stop()
        server.wait(10)


@pytest.mark.parametrize(
    ("guest", "problem"),
    [
        ({"key_data": "ssh-rsa AAAA broken"}, "not a valid OpenSSH public key"),
        ({"user_data": "eA==" * 20000}, "more than the 65535 allowed"),
    ],
)
def test_bad_guest_data_is_refused_before_any_instance_exists(
    scheduler: SchedulerAPI, api: ConductorAPI, guest: dict[str, str], problem: str
) -> None:
    with pytest.raises(BadGuestData, match=problem):
        scheduler.boot(CTX, **REQUEST, **guest)
    with pytest.raises(BadGuestData, match=problem):  # the conductor checks for itself too
        api.create_instance(
            CTX, "vm", "p", "u", Flavor(vcpus=1, memory_mb=1, disk_gb=1), "i", **guest
        )
    assert api.list_instances(CTX, include_deleted=True) == []


def test_the_command_refuses_a_bad_key_file_in_one_line(
    tmp_path: Path, bus_url: str, conductor: Conductor, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "id.pub"
    bad.write_text("ssh-ed25519 AAAAnot-a-key me@host\n")
    code = main(["--transport-url", bus_url, "boot", "vm", "--image", "x", "--key", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "not a valid OpenSSH public key" in err
    assert conductor.db.list_instances(include_deleted=True) == []


def test_the_command_refuses_too_much_user_data_in_one_line(
    tmp_path: Path, bus_url: str, conductor: Conductor, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "user-data"
    big.write_bytes(b"x" * 60_000)
    code = main(["--transport-url", bus_url, "boot", "vm", "--image", "x", "--user-data", str(big)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "more than the 65535 allowed" in err
    assert conductor.db.list_instances(include_deleted=True) == []


class ConductorV10(ConductorManager):
    """The real conductor endpoint, advertising the interface before key and user data."""

    target = rpclib.Target(namespace="conductor", version="1.0")


def test_a_conductor_still_on_1_0_is_never_sent_a_key_it_would_drop(
    transport: rpclib.Transport, tmp_path: Path
) -> None:
    engine = create_engine(state_dir=tmp_path)
    migrations.upgrade(engine)
    db = ConductorDB(engine)
    notifier = rpclib.Notifier(transport, publisher_id="conductor.old")
    server = rpclib.RPCServer(
        transport,
        rpclib.Target(topic="conductor", server="old"),
        [ConductorV10(db, notifier, authorization=False)],
    )
    server.start()
    try:
        api = ConductorAPI(transport, timeout=10)
        flavor = Flavor(vcpus=1, memory_mb=1, disk_gb=1)
        with pytest.raises(rpclib.VersionCapError, match="create_instance"):
            api.create_instance(CTX, "vm", "p", "u", flavor, "i", key_data=public_key())
        assert db.list_instances(include_deleted=True) == []
        assert api.create_instance(CTX, "vm", "p", "u", flavor, "i").key_data is None
    finally:
        server.stop()
        server.wait(10)
        notifier.close()
        engine.dispose()
