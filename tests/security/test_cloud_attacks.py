"""A rogue compute node with its own valid account attacks the real services, and fails.

Each test is one attack from issue 12, made by a fresh rogue compute node
(``compute-rogue...``, its own account with a compute node's grants) through
the services' own client code or straight through its driver. Each must be
refused (:class:`rpclib.Forbidden` from a service's policy, or
:class:`rpclib.AccessRefused` from the bus or broker; a refused cast is
dead-lettered or logged), the refusal must be logged naming the rogue (by
rpclib, or on RabbitMQ by the broker), and the database rows, the
allocations, the queues and the billing ledger must be unchanged.

Each attack runs on the embedded bus and on RabbitMQ (a vhost of the shared
broker, accounts applied by ``rpclib.access``), against one cloud per
transport that every attack must leave as it found it.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import time
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
from tests.support.rabbit import BROKER, PASSWORD, USER, broker_log_path, rabbitmqctl

CTX: dict[str, Any] = {"user": "rogue"}
REFUSED = (rpclib.AccessRefused, rpclib.Forbidden)
"""Refused by the bus or broker (the account's grants), or by a service's policy."""
EXCHANGE = "rpclib"
FORGED_STATE = {"vm_state": "ERROR", "ip_address": "203.0.113.66", "error_reason": "pwned"}


@pytest.fixture(scope="module", params=["memory", "rabbit"])
def bus_for_attacks(request: pytest.FixtureRequest) -> Iterator[str]:
    """The bus URL (with admin credentials) the attacked cloud runs on: the embedded bus,
    and a vhost of the shared RabbitMQ broker (accounts applied through rabbitmqctl)."""
    if request.param == "rabbit":
        vhost = f"rpclib-attacks-{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
        yield f"rabbit://{USER}:{PASSWORD}@{BROKER}/{vhost}"
        rabbitmqctl("delete_vhost", vhost)
        return
    name = f"attack{uuid.uuid4().hex[:10]}"
    yield f"memory://{name}"
    reset_bus(name)


@pytest.fixture(scope="module")
def attacked(
    bus_for_attacks: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AttackedCloud]:
    """One cloud per transport for the module: every attack must leave it as it was."""
    running = start_cloud(bus_for_attacks, tmp_path_factory.mktemp("attacked"))
    yield running
    running.close()


@pytest.fixture
def cloud(attacked: AttackedCloud) -> AttackedCloud:
    """The cloud, attacked by a compute node of its own that has not attacked before."""
    attacked.new_rogue()
    return attacked


class Logged:
    """Where refusals are logged: rpclib's own log, and on RabbitMQ the broker's log
    (the broker, not rpclib, refuses what an account's permissions do not allow)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.broker_log = broker_log_path()
        self.offset = self.broker_log.stat().st_size if self.broker_log.exists() else 0

    def broker_refused(self, user: str, timeout: float = 5.0) -> bool:
        """Whether the broker logged refusing ``user`` since the test began (it writes
        its log a moment after refusing)."""
        deadline = time.monotonic() + timeout
        while self.broker_log.exists():
            with self.broker_log.open("rb") as f:
                f.seek(self.offset)
                text = f.read().decode(errors="replace")
            if f"refused for user '{user}'" in text:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return False


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Logged:
    caplog.set_level(logging.WARNING)
    return Logged(caplog)


def refusal_logged(logged: Logged, *words: str) -> bool:
    """A WARNING or worse holding every one of ``words`` in rpclib's log, or the broker
    logging that it refused the user among ``words``."""
    if any(
        r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)
        for r in logged.caplog.records
    ):
        return True
    return any(w.startswith(ROGUE) and logged.broker_refused(w) for w in words)


def conductor_of(cloud: AttackedCloud) -> ConductorAPI:
    return ConductorAPI(cloud.rogue, timeout=10)


# --- claiming to be another host ---------------------------------------------------


def test_setting_another_hosts_instance_to_error_as_that_host_is_refused(
    cloud: AttackedCloud, logged: Logged
) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    victim = str(cloud.victim.uuid)
    conductor_of(cloud).instance_update(CTX, victim, "compute1", 10**6, dict(FORGED_STATE))
    cloud.wait_for_dead_letter("Forbidden", rogue, "instance_update")
    assert refusal_logged(logged, "instance_update", rogue, "compute1")
    assert cloud.snapshot() == before


def test_setting_another_hosts_instance_to_error_as_itself_is_refused(
    cloud: AttackedCloud, logged: Logged
) -> None:
    rogue_host = cloud.rogue_principal.removeprefix("compute-")
    before = cloud.snapshot()
    victim = str(cloud.victim.uuid)
    conductor_of(cloud).instance_update(CTX, victim, rogue_host, 10**6, dict(FORGED_STATE))
    cloud.wait_for_dead_letter("WrongHost", victim)
    assert refusal_logged(logged, "instance_update", rogue_host, victim)
    assert cloud.snapshot() == before


def test_registering_as_another_host_is_refused(cloud: AttackedCloud, logged: Logged) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    for vcpus in (0, 10**6):  # emptying the host, then inflating it
        with pytest.raises(rpclib.Forbidden, match=rogue):
            conductor_of(cloud).register_compute(CTX, "compute1", vcpus, 1, 1, {"compute": "1.1"})
    assert refusal_logged(logged, "register_compute", rogue, "compute1")
    assert cloud.snapshot() == before


def test_heartbeating_as_another_host_is_refused(cloud: AttackedCloud, logged: Logged) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    conductor_of(cloud).heartbeat(CTX, "compute1", "compute")  # an at-most-once cast: logged
    wait_until(
        lambda: refusal_logged(logged, "heartbeat", rogue, "compute1"),
        30,
        "the refusal",
    )
    assert cloud.snapshot() == before


def test_releasing_another_instances_allocation_is_refused(
    cloud: AttackedCloud, logged: Logged
) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    conductor_of(cloud).release_allocation(CTX, str(cloud.victim.uuid))
    cloud.wait_for_dead_letter("Forbidden", rogue, "release_allocation")
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
    cloud: AttackedCloud, logged: Logged, address: Address
) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    with pytest.raises(REFUSED, match=rogue):
        cloud.rogue.driver.listen(address, lambda incoming: incoming.ack())
    assert refusal_logged(logged, rogue, str(address))
    assert cloud.snapshot() == before


# --- reading and changing everything ---------------------------------------------------


def test_listing_every_projects_instances_is_refused(cloud: AttackedCloud, logged: Logged) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    with pytest.raises(rpclib.Forbidden, match=rogue):
        conductor_of(cloud).list_instances(CTX)
    with pytest.raises(rpclib.Forbidden, match=rogue):
        conductor_of(cloud).get_instance(CTX, str(cloud.other.uuid))
    assert refusal_logged(logged, rogue, "list_instances")
    assert cloud.snapshot() == before


def test_creating_and_claiming_instances_is_refused(cloud: AttackedCloud, logged: Logged) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    server = cloud.services.conductor.server
    assert server is not None
    forbidden_before = server.stats.forbidden
    conductor = conductor_of(cloud)
    with pytest.raises(rpclib.Forbidden, match=rogue):
        conductor.create_instance(
            CTX, "free", "acme", "u", Flavor(vcpus=1, memory_mb=64, disk_gb=1), "img"
        )
    resources = {"VCPU": 1, "MEMORY_MB": 64, "DISK_GB": 1}
    with pytest.raises(rpclib.Forbidden, match=rogue):
        conductor.claim(CTX, str(cloud.victim.uuid), "compute2", resources)
    with pytest.raises(rpclib.Forbidden, match=rogue):
        conductor.fail_unplaced(CTX, str(cloud.other.uuid), "pwned")
    assert refusal_logged(logged, rogue, "create_instance")  # the others are counted:
    assert server.stats.forbidden == forbidden_before + 3
    assert cloud.snapshot() == before


def test_deleting_another_tenants_instance_through_the_scheduler_is_refused(
    cloud: AttackedCloud, logged: Logged
) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    with pytest.raises(REFUSED, match=rogue):
        SchedulerAPI(cloud.rogue, timeout=10).delete(CTX, str(cloud.other.uuid))
    assert refusal_logged(logged, rogue, "scheduler")
    assert cloud.snapshot() == before


def test_sending_a_compute_node_a_delete_directly_is_refused(
    cloud: AttackedCloud, logged: Logged
) -> None:
    rogue = cloud.rogue_principal
    before = cloud.snapshot()
    try:
        ComputeAPI(cloud.rogue).delete_instance(CTX, "compute2", cloud.other)
    except REFUSED:
        pass  # refused by the bus; else compute2's policy dead-letters it
    else:
        cloud.wait_for_dead_letter("Forbidden", rogue, "delete_instance")
    assert refusal_logged(logged, rogue, "compute")
    assert cloud.snapshot() == before


# --- forging usage -----------------------------------------------------------------------


def test_forged_usage_is_not_billed(cloud: AttackedCloud, logged: Logged) -> None:
    rogue = cloud.rogue_principal
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
    if not refusal_logged(logged, rogue, "notifications.info"):  # the bus let it through:
        cloud.wait_for_dead_letter("Forbidden", rogue, notifications.CREATE_END)  # billing's
    assert refusal_logged(logged, rogue, "notifications")
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


def test_a_replayed_boot_is_refused(signed_cloud: AttackedCloud, logged: Logged) -> None:
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


def test_a_forged_signature_is_refused(signed_cloud: AttackedCloud, logged: Logged) -> None:
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
