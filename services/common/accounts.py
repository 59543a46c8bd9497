"""One bus account per service instance, provisioned for a whole cloud.

:func:`provision_cloud` creates (through ``rpclib.access.provision``) an
account per principal of :mod:`services.common.identities`, each with a
fresh random password and exactly its grants, and returns the transport URL
each service logs in with. On ``memory://NAME`` the accounts live on the bus
in this process; on a broker the admin credentials come from the URL given
(``rabbit://admin:secret@host/``) and the broker's access module does the
work (``rpclib.transports.<scheme>.access``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rpclib.access import Access, Account, login_url, provision
from rpclib.access_cli import password_for
from rpclib.transports.url import parse_url
from services.common import identities


class ProvisioningUnavailable(RuntimeError):
    """The transport has no least-privilege provisioning (yet); the message says what to do."""


@dataclass(frozen=True)
class CloudHosts:
    """The hosts of one cloud's service instances."""

    conductor: str
    scheduler: str
    billing: str
    computes: tuple[str, ...]

    def accesses(self) -> list[Access]:
        """Every service instance's access, and the admin's."""
        return [
            identities.access(identities.CONDUCTOR, self.conductor),
            identities.access(identities.SCHEDULER, self.scheduler),
            identities.access(identities.BILLING, self.billing),
            *(identities.access(identities.COMPUTE, h) for h in self.computes),
            identities.admin_access(),
        ]


def admin_url_for(url: str) -> str:
    """The admin URL of the bus ``url`` names (a memory bus takes no credentials)."""
    parsed = parse_url(url)
    if parsed.scheme == "memory":
        host = parsed.hosts[0].hostname if parsed.hosts else "default"
        return f"memory://{host}"
    return url


def provision_cloud(url: str, hosts: CloudHosts) -> dict[str, str]:
    """Create the cloud's accounts on the bus ``url`` names; each principal's login URL."""
    return provision_accesses(url, hosts.accesses())


def provision_kept(url: str, hosts: CloudHosts, secrets_dir: Path) -> dict[str, Path]:
    """Create the cloud's accounts, keeping each principal's password in ``secrets_dir``.

    A principal's password is made once (``secrets_dir/PRINCIPAL``, mode 0600)
    and kept on later runs, so running this again (for a new compute node, say)
    leaves the running services' logins alone. Each principal's login URL is
    written to ``secrets_dir/PRINCIPAL.url`` (0600); returns those files.
    """
    accesses = hosts.accesses()
    accounts = [
        Account(a, password_for(secrets_dir, a.principal, create=True) or "") for a in accesses
    ]
    admin = admin_url_for(url)
    _provision(url, admin, accounts)
    files = {}
    for account in accounts:
        path = secrets_dir / f"{account.access.principal}.url"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(login_url(admin, account) + "\n")
        files[account.access.principal] = path
    return files


def _provision(url: str, admin: str, accounts: Sequence[Account]) -> None:
    try:
        provision(admin, accounts)
    except (ModuleNotFoundError, ValueError) as exc:
        why = f"{exc.name} is not available" if isinstance(exc, ModuleNotFoundError) else exc
        raise ProvisioningUnavailable(
            f"cannot create per-service accounts on {parse_url(url).scheme}:// ({why}); "
            "create them yourself (rpclib.access) and start each service with its own "
            "credentials, or pass --insecure to share one account without authorization"
        ) from None


def provision_accesses(url: str, accesses: Sequence[Access]) -> dict[str, str]:
    """An account with a fresh random password per access; each principal's login URL.

    Raises :class:`ProvisioningUnavailable` (one line) if this transport cannot
    create accounts here.
    """
    accounts = [Account(a, secrets.token_urlsafe(24)) for a in accesses]
    admin = admin_url_for(url)
    _provision(url, admin, accounts)
    return {a.access.principal: login_url(admin, a) for a in accounts}
