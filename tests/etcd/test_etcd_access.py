"""Attacks by a rogue compute node holding its own valid etcd credentials and signing key.

etcd runs with authentication on and the roles ``rpclib.access`` derives
(secure_cloud.py). ``compute-2`` is the rogue; ``compute-1`` and the
conductor are its victims. The roles keep it out of other principals' keys;
signatures (rpclib.signing) say who sent what it may still write; the
conductor's Policy decides what that sender may call.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import rpclib
from rpclib.access import Access, Account, provision, render
from rpclib.signing import SigningKey
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.etcd import EtcdDriver
from rpclib.transports.etcd import client as ops
from rpclib.transports.etcd.access import permissions
from rpclib.transports.etcd.client import NotAuthorized
from rpclib.transports.etcd.wire import Message
from tests.etcd.secure_cloud import EXCHANGE, NOTIFICATIONS, SecureEtcd, accesses, start_secure_etcd
from tests.rpc.helpers import wait_until
from tests.support.conductor_endpoint import RecordingConductor
from tests.support.etcd import GENERATIONS, ROOT_PASSWORD, ROOT_USER, generation_binary

COMPUTE_1 = Address(EXCHANGE, "compute", server="compute-1")
CONDUCTOR = Address(EXCHANGE, "conductor", server="conductor")


@pytest.fixture(scope="module", params=sorted(GENERATIONS))
def cloud(request: pytest.FixtureRequest) -> Iterator[SecureEtcd]:
    """etcd 3.4 and 3.5, each with auth on and rpclib's roles."""
    yield from start_secure_etcd(generation_binary(request.param))


@pytest.fixture(autouse=True)
def _close_transports(cloud: SecureEtcd) -> Iterator[None]:
    yield
    cloud.close_all()


def etcd_of(transport: rpclib.Transport) -> EtcdDriver:
    """The etcd driver under the signing layer."""
    driver = getattr(transport.driver, "inner", transport.driver)
    assert isinstance(driver, EtcdDriver)
    return driver


def refused(transport: rpclib.Transport) -> int:
    return int(transport.driver.refused)  # type: ignore[attr-defined]


POLICY = rpclib.Policy(
    [
        rpclib.Allow("compute-1", namespace="conductor", methods=["heartbeat", "list_instances"]),
        rpclib.Allow("compute-2", namespace="conductor", methods=["heartbeat"]),
    ]
)


@pytest.fixture
def conductor(cloud: SecureEtcd) -> Iterator[tuple[RecordingConductor, rpclib.RPCServer]]:
    endpoint = RecordingConductor()
    server = rpclib.RPCServer(
        cloud.transport("conductor"),
        rpclib.Target(topic="conductor", server="conductor"),
        [endpoint],
        policy=POLICY,
    )
    server.start()
    yield endpoint, server
    server.stop()
    server.wait()


def caller(transport: rpclib.Transport, **kw: Any) -> rpclib.RPCClient:
    target = rpclib.Target(topic="conductor", namespace="conductor", version="1.0")
    return rpclib.RPCClient(transport, target, timeout=15, **kw)


def admin_dead_letters(cloud: SecureEtcd) -> list[str]:
    """Dead letters' reasons, read as root (no service's role may read them)."""
    admin = load_driver(cloud.admin_url)
    try:
        return [letter.reason for letter in admin.dead_letters(1000)]
    finally:
        admin.close()


# --- reading what is not yours --------------------------------------------------------


def test_a_rogue_cannot_consume_another_nodes_server_queue(cloud: SecureEtcd) -> None:
    victim = cloud.transport("compute-1")
    victim.driver.declare(COMPUTE_1)
    rogue = cloud.transport("compute-2")
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.driver.listen(COMPUTE_1, lambda incoming: None)


def test_a_rogue_cannot_read_a_message_stored_for_another_node(cloud: SecureEtcd) -> None:
    victim = cloud.transport("compute-1")
    victim.driver.declare(COMPUTE_1)
    cloud.transport("conductor").driver.send(
        COMPUTE_1, b"build with image token", guarantee=Guarantee.AT_LEAST_ONCE
    )
    rogue = etcd_of(cloud.transport("compute-2"))
    queue_keys = f"/{cloud.prefix}/q/{EXCHANGE}/compute/s/compute-1/"
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.client.call("kv/range", ops.range_prefix(queue_keys)["request_range"])


def test_a_rogue_cannot_read_another_nodes_inbox(cloud: SecureEtcd) -> None:
    victim = etcd_of(cloud.transport("compute-1"))
    inbox = victim.open_inbox(lambda body: None)
    etcd_of(cloud.transport("conductor")).send_to_inbox(inbox.address, b"a reply")
    rogue = etcd_of(cloud.transport("compute-2"))
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.client.range_prefix(victim.keys.box_prefix(victim.driver_id))


# --- writing where you may not ----------------------------------------------------------


def test_a_rogue_cannot_advertise_as_another_node(cloud: SecureEtcd) -> None:
    rogue = cloud.transport("compute-2")
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.driver.advertise(COMPUTE_1, b"I am compute-1", ttl=30)


def test_a_rogue_cannot_send_to_a_topic_its_role_does_not_call(cloud: SecureEtcd) -> None:
    cloud.transport("compute-1").driver.declare(COMPUTE_1)
    rogue = cloud.transport("compute-2")
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.driver.send(COMPUTE_1, b"fake build", guarantee=Guarantee.AT_LEAST_ONCE)


def test_a_rogue_cannot_store_a_message_under_another_principals_name(
    cloud: SecureEtcd,
) -> None:
    conductor = cloud.transport("conductor")
    conductor.driver.declare(CONDUCTOR)
    rogue = etcd_of(cloud.transport("compute-2"))
    key = f"/{cloud.prefix}/q/{EXCHANGE}/conductor/s/conductor/m/compute-1.{uuid.uuid4().hex}"
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.client.txn(ops.txn([], [ops.put(key, Message(b"forged", 0, None).encode())]))


# --- who sent it: signatures, the policy, replays ----------------------------------------


def test_allowed_principals_are_served_as_themselves(conductor: Any, cloud: SecureEtcd) -> None:
    assert caller(cloud.transport("compute-1")).call({}, "heartbeat") == "compute-1"
    assert caller(cloud.transport("compute-1")).call({}, "list_instances") == [
        "every project's instances"
    ]


def test_the_policy_refuses_the_rogues_call_with_forbidden(
    conductor: Any, cloud: SecureEtcd
) -> None:
    endpoint, server = conductor
    with pytest.raises(rpclib.Forbidden) as refusal:
        caller(cloud.transport("compute-2")).call({}, "list_instances")
    assert (refusal.value.principal, refusal.value.method) == ("compute-2", "list_instances")
    assert endpoint.seen.empty()
    assert server.stats.forbidden == 1


def test_a_message_signed_with_a_key_claiming_another_principal_is_refused(
    conductor: Any, cloud: SecureEtcd
) -> None:
    endpoint, server = conductor
    forged = SigningKey.generate("compute-1")  # the rogue's own key, claiming compute-1
    rogue = cloud.transport("compute-2", key=forged)
    caller(rogue, at_least_once=True).cast({}, "heartbeat", tag="forged")
    wait_until(lambda: refused(server.transport) == 1, what="the refusal")
    wait_until(  # the dead letter is stored with the settlement that follows it
        lambda: any("signed by 'compute-1' with key" in r for r in admin_dead_letters(cloud)),
        what="the dead letter naming the claim",
    )
    assert endpoint.seen.empty()


def test_an_unsigned_message_is_refused(conductor: Any, cloud: SecureEtcd) -> None:
    endpoint, server = conductor
    rogue = cloud.transport("compute-2", signed=False)
    caller(rogue, at_least_once=True).cast({}, "heartbeat", tag="unsigned")
    wait_until(lambda: refused(server.transport) == 1, what="the refusal")
    assert endpoint.seen.empty()


def test_a_captured_message_sent_again_is_refused(conductor: Any, cloud: SecureEtcd) -> None:
    endpoint, server = conductor
    victim = cloud.transport("compute-1")
    sent: list[tuple[Address, bytes]] = []
    inner = victim.driver.inner  # type: ignore[attr-defined]
    original = inner.send

    def tap(address: Address, body: bytes, **kw: Any) -> None:  # a wire tap
        sent.append((address, body))
        original(address, body, **kw)

    inner.send = tap
    caller(victim, at_least_once=True).cast({}, "heartbeat", tag="once")
    assert endpoint.seen.get(timeout=15) == ("once", "compute-1")
    address, sealed = sent[-1]
    rogue = cloud.transport("compute-2")
    rogue.driver.inner.send(address, sealed, guarantee=Guarantee.AT_LEAST_ONCE)  # type: ignore[attr-defined]
    wait_until(lambda: refused(server.transport) == 1, what="the refusal")
    wait_until(  # the dead letter is stored with the settlement that follows it
        lambda: any(
            "replay of a message 'compute-1' sent before" in r for r in admin_dead_letters(cloud)
        ),
        what="the dead letter naming the replay",
    )
    assert endpoint.seen.empty()


def test_a_compute_node_still_serves_its_own_queue(cloud: SecureEtcd) -> None:
    got: queue.Queue[Incoming] = queue.Queue()
    node = cloud.transport("compute-1")
    subscription = node.driver.listen(COMPUTE_1, got.put)
    try:
        cloud.transport("conductor").driver.send(
            COMPUTE_1, b"build", guarantee=Guarantee.AT_LEAST_ONCE
        )
        while (incoming := got.get(timeout=15)).body != b"build":  # earlier tests' too
            incoming.ack()
        incoming.ack()
    finally:
        subscription.close()


def test_a_principals_private_keys_start_with_its_name(cloud: SecureEtcd) -> None:
    node = etcd_of(cloud.transport("compute-1"))
    subscription = node.listen(COMPUTE_1, lambda incoming: None)
    inbox = node.open_inbox(lambda body: None)
    try:
        assert node.driver_id.startswith("compute-1.")
        assert inbox.address.startswith("compute-1.")
        live = cloud.server.keys(f"{cloud.prefix}/live/{EXCHANGE}/compute/s/compute-1")
        assert live and all(k.rpartition("/")[2].startswith("compute-1.") for k in live)
    finally:
        subscription.close()
        inbox.close()


# --- notifications -------------------------------------------------------------------


class Ledger:
    def __init__(self) -> None:
        self.seen: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def info(self, ctx: Any, publisher: str, event_type: str, payload: Any, meta: Any) -> None:
        self.seen.put((event_type, meta.get("sender")))


def test_billing_counts_the_conductors_notifications_as_the_conductors(
    cloud: SecureEtcd,
) -> None:
    ledger = Ledger()
    listener = rpclib.NotificationListener(
        cloud.transport("billing"),
        [rpclib.Target(topic=NOTIFICATIONS)],
        [ledger],
        "billing",
        policy=rpclib.Policy([rpclib.Allow("conductor", events=["instance.*"])]),
    )
    listener.start()
    try:
        conductor = cloud.transport("conductor")
        notifier = rpclib.Notifier(
            conductor, "conductor", topics=[NOTIFICATIONS], ensure_pools=["billing"]
        )
        notifier.info({}, "instance.create.end", {"vcpus": 2})
        notifier.close()
        assert ledger.seen.get(timeout=15) == ("instance.create.end", "conductor")
    finally:
        listener.stop()
        listener.wait()


def test_a_rogue_cannot_emit_notifications(cloud: SecureEtcd) -> None:
    cloud.transport("billing").driver.declare(
        Address(EXCHANGE, f"{NOTIFICATIONS}.info"), group="billing"
    )
    rogue = cloud.transport("compute-2")
    with pytest.raises(NotAuthorized, match="permission denied"):
        rogue.driver.send(
            Address(EXCHANGE, f"{NOTIFICATIONS}.info"),
            b"instance.create.end: 720,000 vcpus",
            guarantee=Guarantee.AT_LEAST_ONCE,
        )


# --- provisioning ----------------------------------------------------------------------


def role_permissions(cloud: SecureEtcd, role: str) -> list[tuple[str, str, str]]:
    perms = cloud.server.request("auth/role/get", {"role": role}).get("perm", [])
    return sorted(
        (
            p.get("permType", "READ"),
            ops.unb64(p["key"]).decode(),
            ops.unb64(p.get("range_end", "")).decode(),
        )
        for p in perms
    )


def test_provisioning_again_changes_nothing_and_a_narrower_access_revokes(
    cloud: SecureEtcd,
) -> None:
    prefix = f"/prov{uuid.uuid4().hex[:6]}/"
    admin = cloud.server.url(prefix.strip("/"), user=ROOT_USER, password=ROOT_PASSWORD)
    wide = Access("compute-9").serve(rpclib.Target(topic="compute", server="compute-9"))
    wide = wide.call(rpclib.Target(topic="conductor"))
    provision(admin, [Account(wide, "first")])
    role = f"compute-9@{prefix.strip('/')}"
    first = role_permissions(cloud, role)
    provision(admin, [Account(wide, "second")])
    assert role_permissions(cloud, role) == first
    cloud.server.authenticate("compute-9", "second")  # the password was changed
    narrow = Access("compute-9").serve(rpclib.Target(topic="compute", server="compute-9"))
    provision(admin, [Account(narrow, "second")])
    kept = role_permissions(cloud, role)
    assert set(kept) < set(first)
    assert not [p for p in kept if "/conductor/" in p[1]]


def test_render_prints_the_etcdctl_commands_of_each_role(cloud: SecureEtcd) -> None:
    accounts = [Account(a, "pw") for a in accesses()]
    text = render(cloud.admin_url, accounts)
    prefix = f"/{cloud.prefix}/"
    role = f"compute-1@{cloud.prefix}"
    assert "etcdctl user add compute-1 --new-user-password=pw" in text
    assert f"etcdctl role grant-permission {role} readwrite {prefix}box/compute-1. " in text
    assert f"etcdctl user grant-role compute-1 {role}" in text
    mine = [line for line in text.splitlines() if f" {role} " in line]
    assert not [line for line in mine if "compute-2" in line], "compute-1 may touch compute-2"


def expected_roles(prefix: str, accounts: list[Account]) -> dict[str, list[tuple[str, str, str]]]:
    """Role name -> what :func:`permissions` derives, as role_permissions() reads it back."""
    everyone = [a.access.grants() for a in accounts]
    return {
        f"{g.principal}@{prefix.strip('/')}": sorted(
            (perm.name, r.key, r.end or "") for r, perm in permissions(prefix, g, everyone).items()
        )
        for g in everyone
    }


def test_provision_gives_each_role_exactly_the_derived_ranges(cloud: SecureEtcd) -> None:
    accounts = [Account(a, "unused") for a in accesses()]
    for role, wanted in expected_roles(f"/{cloud.prefix}/", accounts).items():
        assert role_permissions(cloud, role) == wanted


def test_the_rendered_etcdctl_commands_make_the_same_roles(cloud: SecureEtcd) -> None:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        pytest.fail("etcdctl is not installed (Debian: etcd-client); render() is checked with it")
    prefix = f"ctl{uuid.uuid4().hex[:6]}"
    accounts = [Account(Access(f"r-{a.principal}", **_shape(a)), "pw") for a in accesses()]
    admin = cloud.server.url(prefix, user=ROOT_USER, password=ROOT_PASSWORD)
    env = {**os.environ, "ETCDCTL_API": "3"}
    for line in render(admin, accounts).splitlines():
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        words[0] = etcdctl
        words[1:1] = [f"--endpoints={cloud.server.endpoint}", f"--user={ROOT_USER}:{ROOT_PASSWORD}"]
        done = subprocess.run(words, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{line}: {done.stderr}"
    for role, wanted in expected_roles(f"/{prefix}/", accounts).items():
        assert role_permissions(cloud, role) == wanted
    cloud.server.authenticate("r-compute-1", "pw")


def _shape(access: Access) -> dict[str, Any]:
    """An Access's fields but its principal (to provision the same shape under another name)."""
    return {
        "serves": access.serves,
        "calls": access.calls,
        "notifies": access.notifies,
        "listens": access.listens,
    }
