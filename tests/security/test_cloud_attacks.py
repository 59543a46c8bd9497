"""A rogue compute node with its own valid account attacks the real services, and fails.

Each test is one attack from issue 12, made by ``compute-rogue`` through the
services' own client code (or straight through its driver). Each must be
refused (``PermissionError``: :class:`rpclib.Forbidden` from a service's
policy, or the bus's ``AccessRefused``; a refused cast is dead-lettered or
logged), the refusal must be logged naming the rogue, and the database rows,
the allocations, the queues and the billing ledger must be unchanged.

The cloud comes from the ``bus_for_attacks`` fixture: parametrize it over
more transports (rabbit://, etcd:// with their ``rpclib.access`` modules) to
run the same attacks there.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.signing import Signing, SigningKey, TrustStore
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.memory import reset_bus
from services import notifications
from services.allinone import HOSTS, wait_until
from services.compute.rpcapi import ComputeAPI
from services.conductor.rpcapi import ConductorAPI
from services.objects import Flavor
from services.scheduler.rpcapi import SchedulerAPI
from tests.security.attacked_cloud import ROGUE, AttackedCloud, start_cloud

CTX: dict[str, Any] = {"user": "rogue"}
EXCHANGE = "rpclib"
FORGED_STATE = {"vm_state": "ERROR", "ip_address": "203.0.113.66", "error_reason": "pwned"}


@pytest.fixture(params=["memory"])
def bus_for_attacks(request: pytest.FixtureRequest) -> Iterator[str]:
    """The bus URL (with admin credentials) the attacked cloud runs on."""
    name = f"attack{uuid.uuid4().hex[:10]}"
    yield f"memory://{name}"
    reset_bus(name)


@pytest.fixture
def cloud(bus_for_attacks: str, tmp_path: Path) -> Iterator[AttackedCloud]:
    running = start_cloud(bus_for_attacks, tmp_path)
    yield running
    running.close()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING)
    return caplog


def refusal_logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    """A WARNING or worse holding every one of ``words``."""
    return any(
        r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)
        for r in caplog.records
    )


def conductor_of(cloud: AttackedCloud) -> ConductorAPI:
    return ConductorAPI(cloud.rogue, timeout=10)


# --- claiming to be another host ---------------------------------------------------


def test_setting_another_hosts_instance_to_error_as_that_host_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    victim = str(cloud.victim.uuid)
    conductor_of(cloud).instance_update(CTX, victim, "compute1", 10**6, dict(FORGED_STATE))
    cloud.wait_for_dead_letter("Forbidden", ROGUE, "instance_update")
    assert refusal_logged(logged, "instance_update", ROGUE, "compute1")
    assert cloud.snapshot() == before


def test_setting_another_hosts_instance_to_error_as_itself_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    victim = str(cloud.victim.uuid)
    conductor_of(cloud).instance_update(CTX, victim, "rogue", 10**6, dict(FORGED_STATE))
    cloud.wait_for_dead_letter("WrongHost", victim)
    assert refusal_logged(logged, "instance_update", "rogue", victim)
    assert cloud.snapshot() == before


def test_registering_as_another_host_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    for vcpus in (0, 10**6):  # emptying the host, then inflating it
        with pytest.raises(rpclib.Forbidden, match=ROGUE):
            conductor_of(cloud).register_compute(CTX, "compute1", vcpus, 1, 1, {"compute": "1.1"})
    assert refusal_logged(logged, "register_compute", ROGUE, "compute1")
    assert cloud.snapshot() == before


def test_heartbeating_as_another_host_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    conductor_of(cloud).heartbeat(CTX, "compute1", "compute")  # an at-most-once cast: logged
    wait_until(lambda: refusal_logged(logged, "heartbeat", ROGUE, "compute1"), 30, "the refusal")
    assert cloud.snapshot() == before


def test_releasing_another_instances_allocation_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    conductor_of(cloud).release_allocation(CTX, str(cloud.victim.uuid))
    cloud.wait_for_dead_letter("Forbidden", ROGUE, "release_allocation")
    assert refusal_logged(logged, "release_allocation", "rogue", str(cloud.victim.uuid))
    assert cloud.snapshot() == before


# --- reading another node's builds ---------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        # (Every compute node, the rogue too, consumes the compute topic's shared queue and
        # fanout, as RPC servers of one topic do; nothing sends a compute node work there.)
        Address(EXCHANGE, "compute", server="compute1"),  # compute1's builds
        Address(EXCHANGE, "compute", server="compute2"),
        Address(EXCHANGE, "conductor"),  # every node's reports
        Address(EXCHANGE, "scheduler"),  # the admin's boots and deletes
    ],
    ids=str,
)
def test_consuming_another_nodes_queue_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture, address: Address
) -> None:
    before = cloud.snapshot()
    with pytest.raises(PermissionError, match=ROGUE):
        cloud.rogue.driver.listen(address, lambda incoming: incoming.ack())
    assert refusal_logged(logged, ROGUE, str(address))
    assert cloud.snapshot() == before


# --- reading and changing everything ---------------------------------------------------


def test_listing_every_projects_instances_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    with pytest.raises(rpclib.Forbidden, match=ROGUE):
        conductor_of(cloud).list_instances(CTX)
    with pytest.raises(rpclib.Forbidden, match=ROGUE):
        conductor_of(cloud).get_instance(CTX, str(cloud.other.uuid))
    assert refusal_logged(logged, ROGUE, "list_instances")
    assert cloud.snapshot() == before


def test_creating_and_claiming_instances_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    conductor = conductor_of(cloud)
    with pytest.raises(rpclib.Forbidden, match=ROGUE):
        conductor.create_instance(
            CTX, "free", "acme", "u", Flavor(vcpus=1, memory_mb=64, disk_gb=1), "img"
        )
    resources = {"VCPU": 1, "MEMORY_MB": 64, "DISK_GB": 1}
    with pytest.raises(rpclib.Forbidden, match=ROGUE):
        conductor.claim(CTX, str(cloud.victim.uuid), "compute2", resources)
    with pytest.raises(rpclib.Forbidden, match=ROGUE):
        conductor.fail_unplaced(CTX, str(cloud.other.uuid), "pwned")
    assert refusal_logged(logged, ROGUE, "create_instance")  # the others are counted:
    server = cloud.services.conductor.server
    assert server is not None and server.stats.forbidden == 3
    assert cloud.snapshot() == before


def test_deleting_another_tenants_instance_through_the_scheduler_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    with pytest.raises(PermissionError, match=ROGUE):
        SchedulerAPI(cloud.rogue, timeout=10).delete(CTX, str(cloud.other.uuid))
    assert refusal_logged(logged, ROGUE, "scheduler")
    assert cloud.snapshot() == before


def test_sending_a_compute_node_a_delete_directly_is_refused(
    cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    before = cloud.snapshot()
    try:
        ComputeAPI(cloud.rogue).delete_instance(CTX, "compute2", cloud.other)
    except PermissionError:
        pass  # refused by the bus; else compute2's policy dead-letters it
    else:
        cloud.wait_for_dead_letter("Forbidden", ROGUE, "delete_instance")
    assert refusal_logged(logged, ROGUE, "compute")
    assert cloud.snapshot() == before


# --- forging usage -----------------------------------------------------------------------


def test_forged_usage_is_not_billed(cloud: AttackedCloud, logged: pytest.LogCaptureFixture) -> None:
    before = cloud.snapshot()
    launched = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    forged = notifications.instance_payload(
        instance_uuid=str(uuid.uuid4()),
        name="forged",
        project_id="acme",
        user_id="u",
        host="compute1",
        vcpus=1000,
        memory_mb=1,
        disk_gb=1,
        vm_state="ACTIVE",
        launched_at=launched,
        deleted_at=None,
    )
    notifier = rpclib.Notifier(
        cloud.rogue, publisher_id="conductor.conductor1", topics=[notifications.TOPIC]
    )
    notifier.info(CTX, notifications.CREATE_END, forged)
    notifier.close()  # sends (or gives up on) what it holds
    if not refusal_logged(logged, ROGUE, "notifications.info"):  # the bus let it through:
        cloud.wait_for_dead_letter("Forbidden", ROGUE, notifications.CREATE_END)  # billing's
    assert refusal_logged(logged, ROGUE, "notifications")
    assert cloud.snapshot() == before


# --- signatures: a bus that cannot tell senders apart ---------------------------------


@pytest.fixture
def signed_cloud(tmp_path: Path) -> Iterator[AttackedCloud]:
    """The cloud on a memory bus without accounts: every principal signs with its own key."""
    name = f"signed{uuid.uuid4().hex[:10]}"
    principals = [a.principal for a in HOSTS.accesses()] + [ROGUE]
    keys = {p: SigningKey.generate(p) for p in principals}
    trust = TrustStore({p: [k.public_key] for p, k in keys.items()})
    running = start_cloud(f"memory://{name}", tmp_path, signing=lambda p: Signing(keys[p], trust))
    running.keys = dict(keys)
    yield running
    running.close()
    reset_bus(name)


def test_a_replayed_boot_is_refused(
    signed_cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    cloud = signed_cloud
    tapped: queue.Queue[bytes] = queue.Queue()
    wire = rpclib.get_transport(cloud.url)  # the rogue on the wire: no grants stop it reading

    def tap(incoming: Any) -> None:
        tapped.put(incoming.body)
        incoming.ack()

    try:
        wire.driver.listen(Address(EXCHANGE, "scheduler"), tap, group="tap")
        paid = cloud.admin.boot(
            "paid", vcpus=1, memory_mb=64, disk_gb=1, image=cloud.image, project_id="acme", wait=60
        )
        assert paid.vm_state == "ACTIVE"
        captured = tapped.get(timeout=10)
        wait_until(lambda: cloud.billing.ledger.message_count() == 3, 60, "billing")
        before = cloud.snapshot()
        wire.driver.send(Address(EXCHANGE, "scheduler"), captured, guarantee=Guarantee.AT_MOST_ONCE)
        cloud.wait_for_dead_letter("replay")
    finally:
        wire.close()
    assert refusal_logged(logged, "replay")
    assert cloud.snapshot() == before


def test_a_forged_signature_is_refused(
    signed_cloud: AttackedCloud, logged: pytest.LogCaptureFixture
) -> None:
    cloud = signed_cloud
    rogue_key: SigningKey = cloud.keys[ROGUE]
    as_compute1 = SigningKey("compute-compute1", rogue_key.private_key)  # the rogue's own key
    forger = rpclib.get_transport(cloud.url, signing=Signing(as_compute1, TrustStore({})))
    before = cloud.snapshot()
    try:
        ConductorAPI(forger).instance_update(
            CTX, str(cloud.victim.uuid), "compute1", 10**6, dict(FORGED_STATE)
        )
        cloud.wait_for_dead_letter("'compute-compute1'", "not trusted")
    finally:
        forger.close()
    assert refusal_logged(logged, "compute-compute1", "not trusted")
    assert cloud.snapshot() == before
