"""A private etcd with authentication on and least-privilege accounts from rpclib.access.

The accounts are the reference services' shape: a conductor that serves
``conductor``, casts to ``compute`` and emits ``notifications``; compute
nodes that serve ``compute`` as themselves and call ``conductor``; billing,
which reads ``notifications`` as pool ``billing``. :func:`start_secure_etcd`
starts etcd, adds ``root`` and turns authentication on, then provisions the
accounts through ``rpclib.access.provision`` (so the roles tested are the
ones rpclib derives). Every principal also has an Ed25519 signing key; the
trust store holds each one's public key.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import rpclib
from rpclib.access import Access, Account, provision
from rpclib.signing import Signing, SigningKey, TrustStore
from tests.support.etcd import ROOT_PASSWORD, ROOT_USER, EtcdServer

EXCHANGE = "rpclib"
COMPUTES = ("compute-1", "compute-2")
NOTIFICATIONS = "notifications"


def accesses() -> list[Access]:
    """What each principal does on the bus."""
    out = [
        Access("conductor")
        .serve(rpclib.Target(topic="conductor", server="conductor"))
        .call(rpclib.Target(topic="compute"))
        .notify(NOTIFICATIONS),
        Access("billing").listen(NOTIFICATIONS, "billing"),
    ]
    for host in COMPUTES:
        out.append(
            Access(host)
            .serve(rpclib.Target(topic="compute", server=host))
            .call(rpclib.Target(topic="conductor"))
        )
    return out


@dataclass
class SecureEtcd:
    """The server, the deployment's key prefix, passwords and signing keys per principal."""

    server: EtcdServer
    prefix: str
    passwords: dict[str, str]
    keys: dict[str, SigningKey]
    trust: TrustStore
    opened: list[rpclib.Transport] = field(default_factory=list)

    def url(self, principal: str, **options: str) -> str:
        return self.server.url(
            self.prefix, user=principal, password=self.passwords[principal], query=options
        )

    @property
    def admin_url(self) -> str:
        return self.server.url(self.prefix, user=ROOT_USER, password=ROOT_PASSWORD)

    def transport(
        self, principal: str, *, signed: bool = True, key: SigningKey | None = None
    ) -> rpclib.Transport:
        """A transport logged in to etcd as ``principal``, signing with its key (or ``key``)."""
        signing = Signing(key or self.keys[principal], self.trust) if signed else None
        transport = rpclib.get_transport(self.url(principal), signing=signing)
        self.opened.append(transport)
        return transport

    def close_all(self) -> None:
        opened, self.opened = self.opened, []
        for transport in opened:
            transport.close()


def start_secure_etcd(binary: str | None = None) -> Iterator[SecureEtcd]:
    """Start etcd (stopped by pid afterwards), auth on, accounts provisioned; yield it."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-access-"))
    server = EtcdServer(folder, binary=binary)
    server.start()
    try:
        server.enable_auth({})
        prefix = f"cloud{uuid.uuid4().hex[:6]}"
        passwords = {a.principal: f"{a.principal}-{uuid.uuid4().hex[:8]}" for a in accesses()}
        keys = {a.principal: SigningKey.generate(a.principal) for a in accesses()}
        trust = TrustStore({p: [k.public_key] for p, k in keys.items()})
        cloud = SecureEtcd(server, prefix, passwords, keys, trust)
        provision(cloud.admin_url, [Account(a, passwords[a.principal]) for a in accesses()])
        yield cloud
        cloud.close_all()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


Login = Callable[..., rpclib.Transport]
