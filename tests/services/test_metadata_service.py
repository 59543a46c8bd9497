"""The metadata service beside each compute node, asked by a real HTTP client.

The cloud is the real one (services.allinone.Embedded: every service logged in
as itself on memory://, authorization on), with each compute node's metadata
service on 127.0.0.1 and a free port. A guest is whoever the request comes
from: the client binds its socket to a 127.x.y.z source address (Linux routes
all of 127/8 to lo) and that address is recorded as the instance's IP, as a
compute node records a guest's DHCP lease.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import rpclib
from services.allinone import Embedded, make_image, registered_computes, wait_until
from services.cli import Cloud
from services.common import identities
from services.common.accounts import provision_accesses
from services.compute.service import ComputeService
from services.conductor.db import ConductorDB
from services.conductor.rpcapi import ConductorAPI
from services.objects import Instance

USER_DATA = b"#cloud-config\nruncmd:\n - echo hello\n"
ADDRESSES = {"compute1": "127.0.5.7", "compute2": "127.0.6.8"}
UNKNOWN = "127.0.9.9"


@dataclass
class Guests:
    cloud: Embedded
    db: ConductorDB
    key: str
    instances: dict[str, Instance]
    """The ACTIVE instance on each compute host (its IP: ADDRESSES[host])."""

    def port(self, host: str) -> int:
        (compute,) = [
            s for s in self.cloud.services if isinstance(s, ComputeService) and s.host == host
        ]
        assert compute.metadata is not None, f"{host} started no metadata service"
        return compute.metadata.address[1]


def public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " guest@test"


def get(port: int, path: str, source: str) -> tuple[int, bytes]:
    """GET ``path`` from the metadata service on ``port``, sent from ``source``."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def record_address(db: ConductorDB, instance: Instance, address: str) -> None:
    """Record ``address`` as the instance's IP (its compute host reporting a new lease)."""
    current = db.get_instance(str(instance.uuid))
    assert instance.host is not None
    db.apply_instance_update(
        current.uuid, instance.host, current.sequence + 1, {"ip_address": address}
    )


@pytest.fixture
def guests(tmp_path: Path, bus_url: str) -> Iterator[Guests]:
    listen = {host: ("127.0.0.1", 0) for host in ADDRESSES}
    cloud = Embedded(bus_url, tmp_path, "test:///default", metadata=listen)
    cloud.start()
    try:
        admin = cloud.login(identities.ADMIN)
        wait_until(lambda: registered_computes(ConductorAPI(admin)) == 2, 30, "compute nodes")
        user = Cloud(admin, out=io.StringIO())
        key = public_key()
        image = str(make_image(tmp_path))
        user_data = base64.b64encode(USER_DATA).decode()
        booted = [
            user.boot(
                name,
                vcpus=1,
                memory_mb=128,
                disk_gb=1,
                image=image,
                key_data=key,
                user_data=user_data,
            )
            for name in ("Web_1", "db-2")
        ]
        db = conductor_db(cloud)
        instances = {str(i.host): i for i in booted}
        assert sorted(instances) == sorted(ADDRESSES)  # spread: one on each node
        for host, instance in instances.items():
            assert instance.vm_state == "ACTIVE"
            record_address(db, instance, ADDRESSES[host])
        yield Guests(cloud, db, key, instances)
    finally:
        cloud.stop()


def conductor_db(cloud: Embedded) -> ConductorDB:
    assert cloud.conductor.db is not None
    return cloud.conductor.db


def test_a_guest_reads_its_openstack_metadata_and_user_data(guests: Guests) -> None:
    port, instance = guests.port("compute1"), guests.instances["compute1"]
    status, body = get(port, "/openstack/latest/meta_data.json", ADDRESSES["compute1"])
    assert status == 200
    document = json.loads(body)
    assert document["uuid"] == str(instance.uuid)
    assert (document["name"], document["hostname"]) == (instance.name, "web-1")
    assert document["public_keys"] == {"default": guests.key}
    assert document["keys"] == [{"name": "default", "type": "ssh", "data": guests.key}]
    assert get(port, "/openstack/latest/user_data", ADDRESSES["compute1"]) == (200, USER_DATA)
    assert get(port, "/openstack/", ADDRESSES["compute1"]) == (200, b"latest")


def test_a_guest_reads_its_ec2_metadata_as_cirros_and_cloud_init_ask(guests: Guests) -> None:
    port, instance, me = (
        guests.port("compute1"),
        guests.instances["compute1"],
        ADDRESSES["compute1"],
    )
    status, listing = get(port, "/latest/meta-data/", me)
    assert status == 200
    assert {"instance-id", "hostname", "local-ipv4", "public-keys/"} <= set(
        listing.decode().splitlines()
    )
    assert get(port, "/latest/meta-data/instance-id", me) == (200, str(instance.uuid).encode())
    assert get(port, "/2009-04-04/meta-data/instance-id", me) == (200, str(instance.uuid).encode())
    assert get(port, "/latest/meta-data/hostname", me) == (200, b"web-1")
    assert get(port, "/latest/meta-data/local-ipv4", me) == (200, me.encode())
    assert get(port, "/latest/meta-data/public-keys/", me) == (200, b"0=default")
    assert get(port, "/latest/meta-data/public-keys/0/", me) == (200, b"openssh-key")
    key = get(port, "/latest/meta-data/public-keys/0/openssh-key", me)
    assert key == (200, (guests.key + "\n").encode())
    assert get(port, "/latest/user-data", me) == (200, USER_DATA)


def test_every_answer_is_logged_with_the_instance(
    guests: Guests, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.compute.metadata")
    get(guests.port("compute1"), "/latest/meta-data/hostname", ADDRESSES["compute1"])
    uuid = str(guests.instances["compute1"].uuid)
    assert any(
        uuid in r.getMessage() and "/latest/meta-data/hostname" in r.getMessage()
        for r in caplog.records
    )


def test_another_hosts_instance_is_not_served_by_this_node(guests: Guests) -> None:
    theirs = ADDRESSES["compute2"]
    assert get(guests.port("compute1"), "/openstack/latest/meta_data.json", theirs)[0] == 404
    assert (
        get(guests.port("compute1"), "/latest/meta-data/public-keys/0/openssh-key", theirs)[0]
        == 404
    )
    status, body = get(guests.port("compute2"), "/openstack/latest/meta_data.json", theirs)
    assert status == 200 and json.loads(body)["uuid"] == str(guests.instances["compute2"].uuid)


def test_an_unknown_address_gets_404(guests: Guests, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.compute.metadata")
    assert get(guests.port("compute1"), "/openstack/latest/meta_data.json", UNKNOWN)[0] == 404
    assert get(guests.port("compute1"), "/latest/meta-data/instance-id", UNKNOWN)[0] == 404
    assert any(UNKNOWN in r.getMessage() and "404" in r.getMessage() for r in caplog.records)


def test_a_deleted_instance_is_served_no_more(guests: Guests) -> None:
    admin = Cloud(guests.cloud.login(identities.ADMIN), out=io.StringIO())
    admin.delete(str(guests.instances["compute2"].uuid), wait=60)
    wait_until(
        lambda: get(guests.port("compute2"), "/latest/meta-data/", ADDRESSES["compute2"])[0] == 404,
        30,
        "the deleted instance's metadata to go (after the cache's few seconds)",
    )


def test_the_conductor_refuses_a_compute_node_asking_about_another_host(
    guests: Guests, bus_url: str
) -> None:
    rogue_host = "rogue"
    principal = identities.principal(identities.COMPUTE, rogue_host)
    login = provision_accesses(bus_url, [identities.access(identities.COMPUTE, rogue_host)])
    rogue = rpclib.get_transport(login[principal])
    try:
        api = ConductorAPI(rogue, timeout=10)
        with pytest.raises(rpclib.Forbidden, match="acts only as its own host"):
            api.get_instance_metadata({}, "compute1", ADDRESSES["compute1"])
        assert api.get_instance_metadata({}, rogue_host, ADDRESSES["compute1"]) is None
    finally:
        rogue.close()


def test_only_compute_nodes_may_ask_for_metadata(guests: Guests) -> None:
    admin = ConductorAPI(guests.cloud.login(identities.ADMIN), timeout=10)
    with pytest.raises(rpclib.Forbidden):
        admin.get_instance_metadata({}, "compute1", ADDRESSES["compute1"])


def test_a_node_that_cannot_bind_its_metadata_address_says_so_and_still_serves(
    tmp_path: Path, bus_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cloud = Embedded(
        bus_url, tmp_path, "test:///default", metadata={"compute1": ("127.0.0.1", port)}
    )
    try:
        with caplog.at_level(logging.ERROR, logger="services.compute"):
            cloud.start()
        admin = cloud.login(identities.ADMIN)
        wait_until(lambda: registered_computes(ConductorAPI(admin)) == 2, 30, "compute nodes")
        (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert f"compute compute1: no metadata service, cannot listen on 127.0.0.1:{port}" in error
        assert "\n" not in error
    finally:
        cloud.stop()
        taken.close()


def test_a_conductor_that_does_not_answer_gives_503_and_the_service_goes_on(
    guests: Guests,
) -> None:
    port, me = guests.port("compute1"), ADDRESSES["compute1"]
    assert get(port, "/latest/meta-data/instance-id", me)[0] == 200
    server = guests.cloud.conductor.server
    assert server is not None
    server.stop()
    server.wait(30)
    assert get(port, "/latest/meta-data/instance-id", UNKNOWN)[0] == 503  # not cached: asked
    assert get(port, "/latest/meta-data/hostname", UNKNOWN)[0] == 503  # and it still serves
