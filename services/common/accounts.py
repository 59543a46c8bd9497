"""One bus account per service instance, provisioned for a whole cloud.

:func:`provision_cloud` creates (through ``rpclib.access.provision``) an
account per principal of :mod:`services.common.identities`, each with a
fresh random password and exactly its grants, and returns the transport URL
each service logs in with. On ``memory://NAME`` the accounts live on the bus
in this process; on a broker the admin credentials come from the URL given
(``rabbit://admin:secret@host/``) and the broker's access module does the
work (``rpclib.transports.<scheme>.access``).

On a transport whose driver cannot vouch for a message's sender
(``etcd://``: :data:`SIGNED_SCHEMES`) each principal also gets an Ed25519
signing key (``DIR/PRINCIPAL.key``, 0600), its public half goes into the
trust directory every service reads (``DIR/trust/``), and each login URL
carries both (``?signing_key=...&signing_trust=...``), so a service given its
URL signs what it sends and believes only the cloud's keys
(docs/security.md, "Signing keys").
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from rpclib.access import Access, Account, login_url, provision
from rpclib.access_cli import password_for
from rpclib.transport import SIGNING_OPTIONS
from rpclib.transports.url import parse_url
from services.common import identities

SIGNED_SCHEMES = frozenset({"etcd", "etcds"})
"""Transports whose senders only a signature establishes (etcd records no writer)."""
TRUST_DIR = "trust"
"""The trust directory's name in a secrets (or keys) directory."""


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


def needs_signing(url: str) -> bool:
    """Whether services on ``url``'s transport need signing keys for a sender."""
    return parse_url(url).scheme in SIGNED_SCHEMES


def admin_url_for(url: str) -> str:
    """The admin URL of the bus ``url`` names (a memory bus takes no credentials; the
    administrator's own signing options are not the services')."""
    parsed = parse_url(url)
    if parsed.scheme == "memory":
        host = parsed.hosts[0].hostname if parsed.hosts else "default"
        return f"memory://{host}"
    if SIGNING_OPTIONS & parsed.options.keys():
        head, _, query = url.partition("?")
        kept = [p for p in query.split("&") if p and p.partition("=")[0] not in SIGNING_OPTIONS]
        return head + ("?" + "&".join(kept) if kept else "")
    return url


def signed_url(url: str, key: Path, trust: Path) -> str:
    """``url`` with the signing options naming ``key`` and the trust directory ``trust``."""
    options = f"signing_key={quote(str(key), safe='/')}&signing_trust={quote(str(trust), safe='/')}"
    return url + ("&" if "?" in url else "?") + options


def signing_keys(
    keys_dir: Path, principals: Iterable[str], *, rotate: Iterable[str] = ()
) -> dict[str, Path]:
    """Each principal's signing key file, made once and kept (a new one for ``rotate``).

    ``keys_dir/PRINCIPAL.key`` (0600) holds the private key; its public half
    is added to ``keys_dir/trust/`` as ``PRINCIPAL.KEYID.pub``. A rotated
    principal's old public key stays there, so running services keep
    accepting the old key until :func:`retire_old_keys` removes it.
    """
    try:
        from rpclib.signing import SigningKey  # the signing extra: only where keys are made
    except ImportError as exc:
        raise ProvisioningUnavailable(
            f"signing keys need the signing extra ({exc}): pip install 'rpclib[signing]'"
        ) from None

    trust = keys_dir / TRUST_DIR
    trust.mkdir(parents=True, exist_ok=True, mode=0o700)
    renew = set(rotate)
    files = {}
    for principal in principals:
        path = keys_dir / f"{principal}.key"
        if principal in renew or not path.exists():
            key = SigningKey.generate(principal)
            fresh = path.with_name(path.name + ".new")
            fresh.unlink(missing_ok=True)
            key.save(fresh)
            os.replace(fresh, path)  # a running service never reads half a key
        else:
            key = SigningKey.from_file(principal, path)
        public = trust / f"{principal}.{key.key_id}.pub"
        if not public.exists():
            public.write_bytes(key.public_pem())
        files[principal] = path
    return files


def retire_old_keys(keys_dir: Path, principals: Iterable[str]) -> list[Path]:
    """Remove from the trust directory every public key of ``principals`` that is not
    their current key (after a rotation, once the services use the new ones)."""
    from rpclib.signing import SigningKey

    trust = keys_dir / TRUST_DIR
    removed = []
    for principal in principals:
        path = keys_dir / f"{principal}.key"
        if not path.exists():
            continue
        current = f"{principal}.{SigningKey.from_file(principal, path).key_id}.pub"
        for public in sorted(trust.glob(f"{principal}.*.pub")):
            if public.name != current:
                public.unlink()
                removed.append(public)
    return removed


def provision_cloud(url: str, hosts: CloudHosts, *, keys_dir: Path | None = None) -> dict[str, str]:
    """Create the cloud's accounts on the bus ``url`` names; each principal's login URL.

    Where senders need signatures (:func:`needs_signing`), each principal's
    signing key is made in ``keys_dir`` (required then) and its URL signs with it.
    """
    urls = provision_accesses(url, hosts.accesses())
    if not needs_signing(url):
        return urls
    if keys_dir is None:
        raise ValueError(f"{parse_url(url).scheme}:// needs signing keys: give keys_dir")
    keys = signing_keys(keys_dir, urls)
    return {p: signed_url(u, keys[p], keys_dir / TRUST_DIR) for p, u in urls.items()}


def provision_kept(
    url: str,
    hosts: CloudHosts,
    secrets_dir: Path,
    *,
    rotate_keys: Sequence[str] = (),
    retire_keys: bool = False,
) -> dict[str, Path]:
    """Create the cloud's accounts, keeping each principal's password in ``secrets_dir``.

    A principal's password is made once (``secrets_dir/PRINCIPAL``, mode 0600)
    and kept on later runs, so running this again (for a new compute node, say)
    leaves the running services' logins alone. Where senders need signatures
    (``etcd://``), each principal's signing key is likewise made once
    (``secrets_dir/PRINCIPAL.key``) with its public half in
    ``secrets_dir/trust/``; ``rotate_keys`` makes new keys for those
    principals (the old public keys stay trusted) and ``retire_keys`` removes
    every public key that is no longer a principal's current one. Each
    principal's login URL is written to ``secrets_dir/PRINCIPAL.url`` (0600);
    returns those files.
    """
    accesses = hosts.accesses()
    principals = [a.principal for a in accesses]
    unknown = sorted(set(rotate_keys) - set(principals))
    if unknown:
        raise ValueError(f"cannot rotate the key of {unknown}: not a principal of this cloud")
    signed = needs_signing(url)
    if (rotate_keys or retire_keys) and not signed:
        raise ValueError(
            f"{parse_url(url).scheme}:// services need no signing keys (the broker "
            "vouches for senders): there are none to rotate"
        )
    accounts = [
        Account(a, password_for(secrets_dir, a.principal, create=True) or "") for a in accesses
    ]
    admin = admin_url_for(url)
    keys = signing_keys(secrets_dir, principals, rotate=rotate_keys) if signed else {}
    _provision(url, admin, accounts)
    if retire_keys:
        retire_old_keys(secrets_dir, principals)
    files = {}
    for account in accounts:
        principal = account.access.principal
        text = login_url(admin, account)
        if signed:
            text = signed_url(text, keys[principal], secrets_dir / TRUST_DIR)
        path = secrets_dir / f"{principal}.url"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        files[principal] = path
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
