"""The real reference services in one process, with a rogue compute node, for attack tests.

:func:`start_cloud` brings up conductor, scheduler, billing and two compute
nodes (libvirt's test hypervisor) on a bus URL, each logged in as itself
(``services.allinone.Embedded``), boots one instance per compute node for two
tenants, and gives the rogue compute node ``compute-rogue`` its own valid
account with exactly a compute node's grants. Everything transport-specific
is the bus URL and :meth:`AttackedCloud.dead_letters`, so the same attacks
can run on any transport whose ``rpclib.access`` module exists.
"""

from __future__ import annotations

import datetime as dt
import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rpclib
import rpclib.transports.url
from rpclib.transports.base import DeadLetter
from services.allinone import HOSTS, Embedded, make_image, registered_computes, wait_until
from services.billing.service import BillingService
from services.cli import Cloud
from services.common import identities
from services.common.accounts import provision_accesses
from services.conductor.db import ConductorDB
from services.objects import Instance
from tests.support.rabbit import rabbitmqctl

ROGUE_HOST = "rogue"
ROGUE = identities.principal(identities.COMPUTE, ROGUE_HOST)
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATER = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


@dataclass
class AttackedCloud:
    """A running cloud, its victims, and the rogue compute node's transport."""

    services: Embedded
    admin: Cloud
    rogue: rpclib.Transport
    url: str
    victim: Instance
    """ACTIVE on compute1, project ``acme``."""
    other: Instance
    """ACTIVE on compute2, project ``globex``."""
    image: str
    keys: dict[str, Any] = field(default_factory=dict)
    """Each principal's signing key (signed clouds only)."""
    closing: list[Callable[[], None]] = field(default_factory=list)
    _admin: rpclib.Transport | None = None
    rogue_principal: str = ROGUE
    """Who the rogue is now (a fresh compute node per attack: see :meth:`new_rogue`)."""

    def new_rogue(self) -> None:
        """Replace the rogue by a new compute node with its own valid account, so each
        attack's refusals are its first (logs summarise a sender's repeated refusals)."""
        host = f"rogue{uuid.uuid4().hex[:6]}"
        principal = identities.principal(identities.COMPUTE, host)
        login = provision_accesses(self.url, [identities.access(identities.COMPUTE, host)])
        old, self.rogue = self.rogue, rpclib.get_transport(login[principal])
        self.rogue_principal = principal
        old.close()
        self.closing.append(self.rogue.close)

    @property
    def db(self) -> ConductorDB:
        assert self.services.conductor.db is not None
        return self.services.conductor.db

    @property
    def billing(self) -> BillingService:
        (billing,) = [s for s in self.services.services if isinstance(s, BillingService)]
        return billing

    def snapshot(self) -> dict[str, Any]:
        """What an attack must not change: rows, allocations, inventories, queues, ledger."""
        db = self.db
        instances = db.list_instances(None, include_deleted=True)
        return {
            "instances": instances,
            "events": {i.uuid: db.list_instance_events(i.uuid) for i in instances},
            "allocations": {i.uuid: db.get_allocation(i.uuid) for i in instances},
            "providers": {h: db.get_provider(h) for h in HOSTS.computes},
            "services": sorted((s.host, s.binary, dict(s.versions)) for s in db.list_services()),
            "ledger": (
                self.billing.ledger.message_count(),
                self.billing.ledger.usage(EPOCH, LATER),
            ),
            "queued": self._queued(),
        }

    def _queued(self) -> object:
        """Messages waiting in the bus's queues: memory:// counts them; on RabbitMQ, the
        ready messages of each durable queue (dead letters apart, which attacks may add)."""
        if self.url.startswith("memory://"):
            stats = getattr(self.services.login(identities.ADMIN).driver, "stats", None)
            return int(stats()["ready"]) if stats is not None else -1  # a signing wrapper: -1
        vhost = rpclib.transports.url.parse_url(self.url).virtual_host or "/"
        out = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers",
                          "name", "durable", "messages_ready")  # fmt: skip
        rows = (line.split() for line in out.splitlines() if line.strip())
        return sorted(
            (name, int(ready))
            for name, durable, ready in rows
            if durable == "true" and not name.startswith(("rpclib.dead-letters", "rpclib.reply."))
        )

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter on the bus so far (memory://: the bus keeps them; a broker: read
        with the admin URL's own account, since no service account may)."""
        if self.url.startswith("memory://"):
            driver = self.services.login(identities.ADMIN).driver
            return driver.dead_letters(limit=100_000)
        if self._admin is None:
            self._admin = rpclib.get_transport(self.url)
            self.closing.append(self._admin.close)
        return self._admin.driver.dead_letters(limit=100_000)

    def wait_for_dead_letter(self, *words: str, timeout: float = 30.0) -> DeadLetter:
        """The first dead letter whose reason holds every one of ``words``."""
        deadline = time.monotonic() + timeout
        while True:
            for letter in self.dead_letters():
                if all(w in letter.reason for w in words):
                    return letter
            if time.monotonic() > deadline:
                reasons = [d.reason for d in self.dead_letters()]
                raise AssertionError(f"no dead letter with {words}; reasons: {reasons}")
            time.sleep(0.05)

    def close(self) -> None:
        for step in reversed(self.closing):
            step()
        self.services.stop()


def start_cloud(
    url: str,
    state: Path,
    *,
    signing: Callable[[str], Any] | None = None,
    rogue_url: str | None = None,
) -> AttackedCloud:
    """Start the cloud on ``url`` with per-service accounts (or, with ``signing``, signatures).

    With ``signing`` the bus has no accounts: each principal signs with its own
    key (``signing(principal)``) and the rogue gets a transport signing as
    itself; ``rogue_url`` is then where it connects.
    """
    services = Embedded(
        url,
        state,
        "test:///default",
        accounts=signing is None,
        signing=signing,
    )
    if signing is None:
        rogue_login = provision_accesses(url, [identities.access(identities.COMPUTE, ROGUE_HOST)])
        rogue = rpclib.get_transport(rogue_login[ROGUE])
    else:
        rogue = rpclib.get_transport(rogue_url or url, signing=signing(ROGUE))
    services.start()
    try:
        admin = Cloud(services.login(identities.ADMIN), out=io.StringIO())
        wait_until(lambda: registered_computes(admin.conductor) == 2, 60, "compute nodes")
        image = str(make_image(state))
        victim = admin.boot(
            "victim", vcpus=1, memory_mb=64, disk_gb=1, image=image, project_id="acme", wait=60
        )
        other = admin.boot(
            "other", vcpus=1, memory_mb=64, disk_gb=1, image=image, project_id="globex", wait=60
        )
        assert {victim.vm_state, other.vm_state} == {"ACTIVE"}
        if victim.host != "compute1":
            victim, other = other, victim
        cloud = AttackedCloud(services, admin, rogue, url, victim, other, image)
        wait_until(lambda: cloud.billing.ledger.message_count() == 2, 60, "billing")
    except BaseException:
        rogue.close()
        services.stop()
        raise
    cloud.closing.append(rogue.close)
    return cloud
