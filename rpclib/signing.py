"""Signed messages: the sender established by an Ed25519 signature, for any transport.

Where a transport cannot vouch for who sent a message (etcd keys have no
writer; a memory bus without accounts), every message can carry a signature
instead. ``rpclib.get_transport(url, signing=Signing(key, trust))`` wraps the
driver in a :class:`SigningDriver`: what it sends is sealed with the
process's :class:`SigningKey`, and what it receives is opened against a
:class:`TrustStore` of public keys per principal. A message that does not
verify never reaches rpclib: it is dead-lettered (or, for replies and adverts,
dropped) with the reason, counted and logged.

A seal is ``msgpack([signed, signature])`` where ``signed`` is the msgpack of
``[TAG, principal, key_id, nonce, issued_at, expires_at, destination, body]``
and the signature (Ed25519, the ``cryptography`` package) covers ``signed``'s
bytes exactly. The destination (the address, inbox or advert it was sent to)
is signed, so a captured message cannot be sent anywhere else. A message past
its ``expires_at`` (a call's deadline) is refused, and a nonce that was
settled once is refused again within ``replay_window``: a captured message
sent again is not run twice. Messages without a deadline (at-least-once
casts, notifications) may be replayed after the window; their receivers
already drop duplicates by message id, as at-least-once delivery requires.

Keys rotate without restarts: a principal may have several public keys in the
store at once (each named by its ``key_id``), and a store made from a
directory re-reads it when it changes.

A service takes its signing settings from its transport URL, whatever the
scheme (:func:`signing_from_url`, used by ``rpclib.get_transport``):
``signing_key=PATH`` (its PEM private key), ``signing_trust=DIR`` (the trust
store's directory) and, only where the URL names no user,
``signing_principal=NAME``. The key signs as the URL's user (the account's
principal), and only if the trust store holds it as that principal's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rpclib.exceptions import InvalidTransportURL, MessagingError
from rpclib.logsummary import SummaryLog
from rpclib.transport import SIGNING_OPTIONS
from rpclib.transports.base import (
    Address,
    AdvertHandler,
    DeadLetter,
    Driver,
    Guarantee,
    Inbox,
    InboxEventHandler,
    InboxHandler,
    Incoming,
    MessageHandler,
    SendOutcomeHandler,
    Subscription,
)
from rpclib.transports.url import TransportURL

LOG = logging.getLogger("rpclib.signing")

TAG = "rpclib-signed/1"
NONCE_BYTES = 16
DEFAULT_REPLAY_WINDOW = 600.0
CLOCK_SKEW = 30.0
_REPLAY_CACHE_LIMIT = 1_000_000


class UnverifiedMessage(MessagingError):
    """A received message whose signature, signer, destination or freshness did not check out."""


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _check_principal(principal: str) -> str:
    if not principal or any(c in principal for c in "/\\ \t\n") or principal.startswith("."):
        raise ValueError(f"bad principal name {principal!r}")
    return principal


@dataclass(frozen=True)
class SigningKey:
    """A principal's private key; its public half goes into receivers' trust stores."""

    principal: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, principal: str) -> SigningKey:
        return cls(_check_principal(principal), Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, principal: str, path: str | os.PathLike[str]) -> SigningKey:
        """Load an unencrypted PEM (PKCS#8) Ed25519 private key; ValueError says what is wrong."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the signing key {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError(
                f"the signing key {path} is encrypted: give an unencrypted one"
            ) from None
        except ValueError:
            raise ValueError(
                f"{path} is not a PEM private key (an unencrypted PKCS#8 Ed25519 key)"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
        return cls(_check_principal(principal), key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key as PEM, readable by the owner only."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class TrustStore:
    """Public keys per principal: whom a receiver believes.

    Built from a mapping, or from a directory of ``<principal>.<anything>.pub``
    PEM files (one file per key) that is re-read when it changes (checked at
    most every ``reload_interval`` seconds), so keys are added and retired
    without restarting anyone.
    """

    def __init__(
        self,
        keys: Mapping[str, Iterable[Ed25519PublicKey]] | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        reload_interval: float = 2.0,
    ) -> None:
        self._static: dict[str, dict[str, Ed25519PublicKey]] = {}
        for principal, public_keys in (keys or {}).items():
            for public_key in public_keys:
                self._static.setdefault(_check_principal(principal), {})[key_id_of(public_key)] = (
                    public_key
                )
        self.directory = Path(directory) if directory is not None else None
        self.reload_interval = reload_interval
        self._loaded: dict[str, dict[str, Ed25519PublicKey]] = {}
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._checked = -float("inf")
        self._lock = threading.Lock()
        if self.directory is not None:
            if not self.directory.is_dir():
                raise ValueError(f"the trust store directory {self.directory} does not exist")
            self._reload(force=True)

    def lookup(self, principal: str, key_id: str) -> Ed25519PublicKey | None:
        """The public key ``key_id`` of ``principal``, if trusted now."""
        key = self._static.get(principal, {}).get(key_id)
        if key is not None or self.directory is None:
            return key
        self._reload()
        return self._loaded.get(principal, {}).get(key_id)

    def principals(self) -> set[str]:
        self._reload()
        return set(self._static) | set(self._loaded)

    def trusted_as(self, key_id: str) -> set[str]:
        """The principals whose key ``key_id`` is (normally one, or none)."""
        self._reload()
        return {
            principal
            for keys in (self._static, self._loaded)
            for principal, ids in keys.items()
            if key_id in ids
        }

    def _reload(self, force: bool = False) -> None:
        if self.directory is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self.reload_interval:
            return  # the common case, on every message: no lock
        with self._lock:
            if not force and now - self._checked < self.reload_interval:
                return
            self._checked = now
            files = sorted(self.directory.glob("*.pub"))
            stamp = tuple(_file_stamp(p) for p in files)
            if stamp == self._stamp and not force:
                return
            loaded: dict[str, dict[str, Ed25519PublicKey]] = {}
            for path in files:
                principal = path.name.split(".", 1)[0]
                try:
                    key = serialization.load_pem_public_key(path.read_bytes())
                except (OSError, ValueError) as exc:
                    LOG.error("trust store: ignoring %s: %s", path, exc)
                    continue
                if not isinstance(key, Ed25519PublicKey):
                    LOG.error("trust store: ignoring %s: not an Ed25519 public key", path)
                    continue
                loaded.setdefault(principal, {})[key_id_of(key)] = key
            self._loaded, self._stamp = loaded, stamp

    def write(self, key: SigningKey) -> Path:
        """Add ``key``'s public half to the store's directory (how keys are provisioned)."""
        if self.directory is None:
            raise ValueError("this trust store has no directory")
        path = self.directory / f"{key.principal}.{key.key_id}.pub"
        path.write_bytes(key.public_pem())
        self._reload(force=True)
        return path


def _file_stamp(path: Path) -> tuple[str, int, int]:
    """What tells a changed key file: name, modification time and size (one stat)."""
    st = path.stat()
    return path.name, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Signing:
    """What ``get_transport(..., signing=)`` needs: this process's key and whom it trusts."""

    key: SigningKey
    trust: TrustStore
    replay_window: float = DEFAULT_REPLAY_WINDOW


URL_OPTIONS = SIGNING_OPTIONS
"""Transport URL options naming a process's signing settings (any scheme)."""


def signing_from_url(url: TransportURL) -> tuple[TransportURL, Signing]:
    """The signing settings in ``url``'s options, and ``url`` without them (for the driver).

    ``signing_key=PATH`` and ``signing_trust=DIR`` go together; the key signs
    as the URL's user (the account it logs in with), or as
    ``signing_principal=NAME`` on a URL without a user. Every problem (a
    missing, unreadable or wrong key, a principal other than the account's, a
    key the trust store does not hold as that principal's) raises
    :class:`~rpclib.exceptions.InvalidTransportURL` naming the option.
    """
    options = url.options

    def bad(reason: str) -> InvalidTransportURL:
        return InvalidTransportURL(str(url), reason)

    key_path, trust_dir = options.get("signing_key"), options.get("signing_trust")
    if not key_path:
        given = ", ".join(f"{o}=" for o in sorted(URL_OPTIONS) if o in options)
        raise bad(f"{given} needs signing_key=PATH (this process's Ed25519 private key)")
    if not trust_dir:
        raise bad("signing_key= needs signing_trust=DIR (the public keys this process believes)")
    user = url.hosts[0].username if url.hosts else None
    named = options.get("signing_principal")
    if named is not None and user is not None and named != user:
        raise bad(
            f"signing_principal={named!r} is not the account's principal {user!r} (the "
            "URL's user): a process signs as the account it logs in with"
        )
    principal = named or user
    if not principal:
        raise bad("signing_key= needs a principal to sign as: the URL's user or signing_principal=")
    try:
        _check_principal(principal)
    except ValueError as exc:
        raise bad(f"cannot sign as {principal!r}: {exc}") from None
    path = Path(key_path).expanduser()
    try:
        key = SigningKey.from_file(principal, path)
    except ValueError as exc:
        raise bad(f"signing_key: {_one_line(exc)}") from None
    mode = path.stat().st_mode
    if mode & 0o077:
        LOG.warning(
            "signing_key=%s can be read by others (mode %o): chmod 600 it", path, mode & 0o777
        )
    try:
        trust = TrustStore(directory=Path(trust_dir).expanduser())
    except ValueError as exc:
        raise bad(f"signing_trust={trust_dir}: {_one_line(exc)}") from None
    trusted_as = trust.trusted_as(key.key_id)
    if principal not in trusted_as:
        if trusted_as:
            raise bad(
                f"signing_key={path} (key {key.key_id}) is {sorted(trusted_as)[0]!r}'s in "
                f"signing_trust={trust.directory}, not the account's principal {principal!r}"
            )
        raise bad(
            f"signing_key={path} (key {key.key_id}) is not in signing_trust={trust.directory} "
            f"as {principal!r}'s, so no receiver would believe it: add its public key there "
            f"({principal}.{key.key_id}.pub)"
        )
    return without_options(url, URL_OPTIONS), Signing(key, trust)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def without_options(url: TransportURL, names: Iterable[str]) -> TransportURL:
    """``url`` without the query options ``names`` (its text too, so logs show what is used)."""
    drop = set(names)
    head, _, query = url.raw.partition("?")
    kept = [p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) not in drop]
    raw = head + ("?" + "&".join(kept) if kept else "")
    options = {k: v for k, v in url.options.items() if k not in drop}
    return replace(url, raw=raw, options=options)


@dataclass(frozen=True, slots=True)
class Opened:
    principal: str
    body: bytes
    nonce: bytes
    expires_at: float | None


class Seals:
    """Sealing with one key and opening against one trust store, with the replay cache."""

    def __init__(self, signing: Signing, clock: Callable[[], float] = time.time) -> None:
        self.signing = signing
        self._clock = clock
        self._settled: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def seal(self, destination: str, body: bytes, expires_at: float | None = None) -> bytes:
        key = self.signing.key
        signed = msgpack.packb(
            [
                TAG,
                key.principal,
                key.key_id,
                secrets.token_bytes(NONCE_BYTES),
                self._clock(),
                expires_at,
                destination,
                bytes(body),
            ],
            use_bin_type=True,
        )
        sealed: bytes = msgpack.packb([signed, key.private_key.sign(signed)], use_bin_type=True)
        return sealed

    def open(self, destination: str, data: bytes) -> Opened:
        """Verify ``data`` was sealed for ``destination`` by a trusted key, and is fresh."""
        try:
            signed, signature = msgpack.unpackb(data, raw=False, use_list=True)
            fields = msgpack.unpackb(signed, raw=False, use_list=True)
            tag, principal, key_id, nonce, issued_at, expires_at, sealed_for, body = fields
        except Exception:
            raise UnverifiedMessage("not a signed rpclib message") from None
        if tag != TAG or not isinstance(principal, str) or not isinstance(key_id, str):
            raise UnverifiedMessage("not a signed rpclib message")
        public_key = self.signing.trust.lookup(principal, key_id)
        if public_key is None:
            raise UnverifiedMessage(
                f"signed by {principal!r} with key {key_id}, which is not trusted"
            )
        try:
            public_key.verify(bytes(signature), bytes(signed))
        except (InvalidSignature, TypeError):
            raise UnverifiedMessage(f"bad signature (claims to be from {principal!r})") from None
        if sealed_for != destination:
            raise UnverifiedMessage(
                f"{principal!r} signed it for {sealed_for!r:.200}, not for {destination!r:.200}"
            )
        now = self._clock()
        if not isinstance(issued_at, float | int) or issued_at > now + CLOCK_SKEW:
            raise UnverifiedMessage(f"{principal!r} signed it in the future ({issued_at!r})")
        if expires_at is not None and (not isinstance(expires_at, float | int) or now > expires_at):
            raise UnverifiedMessage(f"{principal!r}'s message expired {now - expires_at:.3f}s ago")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise UnverifiedMessage("bad nonce")
        with self._lock:
            if nonce in self._settled:
                raise UnverifiedMessage(f"replay of a message {principal!r} sent before")
        return Opened(principal, bytes(body), nonce, expires_at)

    def settled(self, opened: Opened) -> None:
        """Remember ``opened`` so that a copy sent again is refused (until it could expire)."""
        now = self._clock()
        until = now + self.signing.replay_window
        if opened.expires_at is not None:
            until = min(until, float(opened.expires_at) + CLOCK_SKEW)
        with self._lock:
            settled = self._settled
            settled[opened.nonce] = until
            while settled:
                nonce, expiry = next(iter(settled.items()))
                if expiry > now and len(settled) <= _REPLAY_CACHE_LIMIT:
                    break
                del settled[nonce]


class _VerifiedIncoming:
    """A received message whose seal was opened: its sender is the signer."""

    __slots__ = ("_inner", "_opened", "_seals")

    def __init__(self, inner: Incoming, opened: Opened, seals: Seals) -> None:
        self._inner = inner
        self._opened = opened
        self._seals = seals

    @property
    def body(self) -> bytes:
        return self._opened.body

    @property
    def attempts(self) -> int:
        return self._inner.attempts

    @property
    def sender(self) -> str | None:
        return self._opened.principal

    def ack(self) -> None:
        self._inner.ack()
        self._seals.settled(self._opened)

    def requeue(self) -> None:
        self._inner.requeue()

    def dead_letter(self, reason: str) -> None:
        self._inner.dead_letter(reason)
        self._seals.settled(self._opened)


def _advert_destination(exchange: str, topic: str, server: str) -> str:
    return f"advert:{exchange}/{topic}@{server}"


class SigningDriver(Driver):
    """Any driver, with every message sealed on the way out and opened on the way in."""

    def __init__(self, inner: Driver, signing: Signing) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.seals = Seals(signing)
        self.refused = 0
        self._log = SummaryLog(LOG)

    def __repr__(self) -> str:
        return f"<SigningDriver as {self.seals.signing.key.principal!r} over {self.inner!r}>"

    def _refuse(self, where: str, exc: UnverifiedMessage) -> None:
        self.refused += 1
        self._log.log(logging.WARNING, "unverified messages", "refused at %s: %s", where, exc)

    # -- sending --

    def send(
        self,
        address: Address,
        body: bytes,
        *,
        guarantee: Guarantee,
        expires_at: float | None = None,
        on_undeliverable: Callable[[Any], None] | None = None,
    ) -> None:
        sealed = self.seals.seal(str(address), body, expires_at)
        self.inner.send(
            address,
            sealed,
            guarantee=guarantee,
            expires_at=expires_at,
            on_undeliverable=on_undeliverable,
        )

    def send_pipelined(
        self,
        address: Address,
        body: bytes,
        *,
        on_outcome: SendOutcomeHandler,
        expires_at: float | None = None,
    ) -> None:
        sealed = self.seals.seal(str(address), body, expires_at)
        self.inner.send_pipelined(address, sealed, on_outcome=on_outcome, expires_at=expires_at)

    def send_to_inbox(self, inbox_address: str, body: bytes) -> None:
        self.inner.send_to_inbox(inbox_address, self.seals.seal(f"inbox:{inbox_address}", body))

    def advertise(self, address: Address, body: bytes, ttl: float) -> None:
        destination = _advert_destination(address.exchange, address.topic, address.server or "")
        # An advert is good for its TTL: a captured one cannot revive a server later.
        sealed = self.seals.seal(destination, body, time.time() + ttl)
        self.inner.advertise(address, sealed, ttl)

    def withdraw(self, address: Address) -> None:
        self.inner.withdraw(address)

    # -- receiving --

    def listen(
        self,
        address: Address,
        handler: MessageHandler,
        *,
        group: str | None = None,
        prefetch: int = 64,
    ) -> Subscription:
        destination = str(address)

        def verified(incoming: Incoming) -> None:
            try:
                opened = self.seals.open(destination, incoming.body)
            except UnverifiedMessage as exc:
                self._refuse(destination, exc)
                incoming.dead_letter(f"unverified: {exc}")
                return
            handler(_VerifiedIncoming(incoming, opened, self.seals))

        return self.inner.listen(address, verified, group=group, prefetch=prefetch)

    def open_inbox(self, handler: InboxHandler, on_event: InboxEventHandler | None = None) -> Inbox:
        holder: list[str] = []

        def verified(body: bytes) -> None:
            destination = f"inbox:{holder[0]}" if holder else ""
            try:
                opened = self.seals.open(destination, body)
            except UnverifiedMessage as exc:
                self._refuse(destination or "an inbox", exc)
                return
            self.seals.settled(opened)
            handler(opened.body)

        inbox = self.inner.open_inbox(verified, on_event)
        holder.append(inbox.address)
        return inbox

    def watch_adverts(self, exchange: str, topic: str, handler: AdvertHandler) -> Subscription:
        def verified(server: str, body: bytes | None) -> None:
            if body is None:
                handler(server, None)
                return
            destination = _advert_destination(exchange, topic, server)
            try:
                opened = self.seals.open(destination, body)
            except UnverifiedMessage as exc:
                self._refuse(destination, exc)
                return
            handler(server, opened.body)

        return self.inner.watch_adverts(exchange, topic, verified)

    # -- the rest is the inner driver's --

    def declare(self, address: Address, group: str | None = None) -> None:
        self.inner.declare(address, group)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self.inner.dead_letters(limit)

    def close(self) -> None:
        self._log.flush()
        self.inner.close()
