"""The reference services as processes on etcd:// with authentication, signing and policies on.

The operator's way, end to end: ``rpclib-cloud accounts`` on an etcd with
authentication on makes each principal's etcd account (a user and a role
over key ranges), its Ed25519 signing key and the trust directory, and
writes login URLs carrying both. Each service runs as its own process with
nothing but its URL (``services.allinone.Processes``), so the services sign
everything they send and believe only the cloud's keys, with authorization on.

Rogue compute nodes (``compute-rogueN``) hold their own valid etcd account
and signing key, provisioned with the cloud but never started as services:
the test process acts as them. One per attack, so each refusal is the
first of its sender and logged at once (refusals are summarised per sender).
The services' logs are their stderr, in ``state/logs/PRINCIPAL.log``.

To see these tests fail with the protection off, make
``ConductorManager._acting_host`` return ``claimed`` (the host from the
arguments), or let ``SigningDriver.listen`` hand on what fails to verify.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.signing import URL_OPTIONS, Signing, SigningKey, TrustStore, without_options
from rpclib.transports.url import parse_url
from services.allinone import HOSTS, Processes, make_image, registered_computes, wait_until
from services.billing.service import BillingAPI
from services.cli import Cloud, main
from services.common import identities
from services.compute.rpcapi import VERSION as COMPUTE_VERSION
from services.conductor.rpcapi import ConductorAPI
from services.objects import Instance
from tests.support.cloud import boot_delete_and_bill
from tests.support.etcd import (
    GENERATIONS,
    ROOT_PASSWORD,
    ROOT_USER,
    EtcdServer,
    generation_binary,
)

ROGUES = ("rogue1", "rogue2", "rogue3", "rogue4")
CTX: dict[str, Any] = {"user": "rogue"}
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATER = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
FORGED_STATE = {"vm_state": "ERROR", "ip_address": "203.0.113.66", "error_reason": "pwned"}
REFUSED_WAIT = 5.0
"""How long a call whose request a service refused as unverified waits (it gets no answer)."""


def provision(admin_url: str, secrets: Path, *extra: str) -> None:
    """``rpclib-cloud accounts`` for the cloud and the rogues, as an operator runs it."""
    hosts = [
        *("--conductor", HOSTS.conductor, "--scheduler", HOSTS.scheduler),
        *("--billing", HOSTS.billing),
        *(arg for host in (*HOSTS.computes, *ROGUES) for arg in ("--compute", host)),
    ]
    args = ["--transport-url", admin_url, "accounts", "--secrets", str(secrets), *hosts, *extra]
    assert main(args) == 0


@dataclass
class SignedCloud:
    """The running processes, the secrets directory and the admin's view."""

    admin_url: str
    secrets: Path
    state: Path
    procs: Processes
    opened: list[rpclib.Transport] = field(default_factory=list)
    _admin: Cloud | None = None

    def url(self, principal: str) -> str:
        return (self.secrets / f"{principal}.url").read_text().strip()

    def login(self, principal: str, **kw: Any) -> rpclib.Transport:
        transport = rpclib.get_transport(self.url(principal), **kw)
        self.opened.append(transport)
        return transport

    @property
    def admin(self) -> Cloud:
        """The user command, logged in (and signing) as ``admin`` with its current key."""
        if self._admin is None:
            self._admin = Cloud(self.login(identities.ADMIN), out=io.StringIO())
        return self._admin

    def relogin_admin(self) -> None:
        self._admin = None

    def log(self, principal: str) -> str:
        return (self.state / "logs" / f"{principal}.log").read_text(errors="replace")

    def logged(self, principal: str, *words: str, timeout: float = 10.0) -> bool:
        """Whether ``principal``'s process logged a WARNING (or worse) holding ``words``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log(principal).splitlines():
                if ("WARNING" in line or "ERROR" in line) and all(w in line for w in words):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def victim(self) -> Instance:
        """An ACTIVE instance on a real compute node (booted if there is none yet)."""
        for instance in self.admin.conductor.list_instances(self.admin.ctx, None, False):
            if instance.vm_state == "ACTIVE":
                return instance
        image = str(make_image(self.state))
        booted = self.admin.boot(
            "victim", vcpus=1, memory_mb=64, disk_gb=1, image=image, project_id="acme", wait=120
        )
        assert booted.vm_state == "ACTIVE"
        return booted

    def snapshot(self) -> dict[str, Any]:
        """What an attack must not change, read through the admin's own calls."""
        conductor, ctx = self.admin.conductor, self.admin.ctx
        instances = conductor.list_instances(ctx, None, True)
        return {
            "instances": sorted(
                (str(i.uuid), i.host, i.vm_state, i.ip_address, i.error_reason, i.sequence)
                for i in instances
            ),
            "services": sorted(
                (s["host"], s["binary"], sorted(s["versions"].items()))
                for s in conductor.client.call(ctx, "list_services")
            ),
            "capacity": sorted(
                (c["host"], sorted(c["capacity"].items()), sorted(c["free"].items()))
                for c in conductor.allocation_candidates(ctx, 1, 1, 1)
            ),
            "usage": self.admin.billing.usage(ctx, EPOCH, LATER),
        }

    def close(self) -> None:
        opened, self.opened = self.opened, []
        for transport in opened:
            transport.close()


@pytest.fixture(scope="module", params=sorted(GENERATIONS))
def signed_cloud(request: pytest.FixtureRequest) -> Iterator[SignedCloud]:
    """etcd 3.4 and 3.5 with authentication on; the services as processes, each with its
    own account and key."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-signed-"))
    server = EtcdServer(folder, binary=generation_binary(request.param))
    server.start()
    cloud: SignedCloud | None = None
    try:
        server.enable_auth({})
        admin_url = server.url("cloud", user=ROOT_USER, password=ROOT_PASSWORD)
        secrets, state = folder / "secrets", folder / "state"
        (state / "logs").mkdir(parents=True)
        provision(admin_url, secrets)
        urls = {a.principal: (secrets / f"{a.principal}.url").read_text().strip()
                for a in HOSTS.accesses()}  # fmt: skip
        procs = Processes(admin_url, state, "test:///default", urls=urls, log_dir=state / "logs")
        cloud = SignedCloud(admin_url, secrets, state, procs)
        procs.start()
        wait_until(
            lambda: registered_computes(cloud.admin.conductor) == len(HOSTS.computes),
            90,
            "both compute processes to register",
        )
        yield cloud
    finally:
        if cloud is not None:
            cloud.close()
            cloud.procs.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# --- the cloud works, with every protection on ---------------------------------------------


def test_services_boot_delete_and_bill_signed_with_authorization_on(
    signed_cloud: SignedCloud,
) -> None:
    """(Runs first: billing must see exactly this test's two instances.)"""
    boot_delete_and_bill(signed_cloud.admin, make_image(signed_cloud.state))


def test_each_service_signs_as_its_own_account(signed_cloud: SignedCloud) -> None:
    trust = TrustStore(directory=signed_cloud.secrets / "trust")
    for access in HOSTS.accesses():
        url = parse_url(signed_cloud.url(access.principal))
        assert url.hosts[0].username == access.principal
        key = SigningKey.from_file(access.principal, url.options["signing_key"])
        assert trust.trusted_as(key.key_id) == {access.principal}
        assert Path(url.options["signing_key"]).stat().st_mode & 0o777 == 0o600


# --- a rogue compute node with its own valid account and key -------------------------------


def rogue(cloud: SignedCloud, host: str) -> ConductorAPI:
    return ConductorAPI(cloud.login(f"compute-{host}"), timeout=30)


def test_a_rogue_cannot_heartbeat_as_another_host(signed_cloud: SignedCloud) -> None:
    cloud = signed_cloud
    before = cloud.snapshot()
    rogue(cloud, "rogue1").heartbeat(CTX, HOSTS.computes[0], "compute")  # a cast: logged
    assert cloud.logged("conductor-conductor1", "compute-rogue1", "heartbeat", "refused")
    assert cloud.snapshot() == before


def test_a_rogue_cannot_register_as_another_host(signed_cloud: SignedCloud) -> None:
    cloud = signed_cloud
    before = cloud.snapshot()
    with pytest.raises(rpclib.Forbidden):
        rogue(cloud, "rogue2").register_compute(
            CTX, HOSTS.computes[0], 0, 0, 0, {"compute": COMPUTE_VERSION}
        )
    assert cloud.logged("conductor-conductor1", "compute-rogue2", "register_compute", "refused")
    assert cloud.snapshot() == before


def test_a_rogue_cannot_update_another_hosts_instance(signed_cloud: SignedCloud) -> None:
    cloud = signed_cloud
    victim = cloud.victim()
    before = cloud.snapshot()
    rogue(cloud, "rogue3").instance_update(  # an at-least-once cast, as compute nodes send it
        CTX, str(victim.uuid), str(victim.host), 10**6, dict(FORGED_STATE)
    )
    assert cloud.logged("conductor-conductor1", "compute-rogue3", "instance_update", "refused")
    assert cloud.snapshot() == before


def test_a_message_signed_with_a_key_not_in_the_trust_store_is_refused(
    signed_cloud: SignedCloud,
) -> None:
    """The rogue's own etcd account, and a key of its own claiming to be the victim's host."""
    cloud = signed_cloud
    victim = cloud.victim()
    before = cloud.snapshot()
    etcd_login = without_options(parse_url(cloud.url("compute-rogue4")), URL_OPTIONS).raw
    forged = Signing(SigningKey.generate(f"compute-{victim.host}"), TrustStore({}))
    forger = rpclib.get_transport(etcd_login, signing=forged)
    cloud.opened.append(forger)
    ConductorAPI(forger).instance_update(
        CTX, str(victim.uuid), str(victim.host), 10**6, dict(FORGED_STATE)
    )
    assert cloud.logged("conductor-conductor1", f"'compute-{victim.host}'", "not trusted")
    assert cloud.snapshot() == before


# --- rotating one principal's key, with no restart ----------------------------------------


def answered(billing: BillingAPI) -> bool:
    """Whether billing answers the admin (a refused request gets no answer)."""
    try:
        billing.usage({}, EPOCH, LATER)
    except rpclib.MessagingTimeout:
        return False
    return True


def test_a_rotated_key_is_accepted_and_the_old_one_refused_once_retired(
    signed_cloud: SignedCloud,
) -> None:
    """The admin's key, rotated the documented way while every service keeps running."""
    cloud = signed_cloud
    old = BillingAPI(cloud.login(identities.ADMIN), timeout=REFUSED_WAIT)
    assert answered(old)
    try:
        provision(cloud.admin_url, cloud.secrets, "--rotate-key", identities.ADMIN)
        new = BillingAPI(cloud.login(identities.ADMIN), timeout=REFUSED_WAIT)
        wait_until(lambda: answered(new), 60, "billing to trust the new key")
        assert answered(old)  # both are trusted until the old one is retired
        provision(cloud.admin_url, cloud.secrets, "--retire-old-keys")
        wait_until(lambda: not answered(old), 60, "billing to stop trusting the old key")
        assert answered(new)
        assert cloud.logged("billing-billing1", "'admin'", "not trusted")
    finally:
        cloud.relogin_admin()  # later tests log in with the admin's current key
