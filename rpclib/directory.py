"""Negotiation: what live servers implement, from their adverts.

Every RPC server advertises, with a heartbeat and a TTL, the namespaces and
versions it implements and the versions of the objects it knows. A client
with ``version_cap="auto"`` asks the :class:`Directory` for the cap of its
target: the lowest version that every live server of the topic implements (or
that the named server implements). As servers are upgraded, join or leave,
the answer follows them, with no restart and no config edit.

When no server is live, the last cap seen for that target is kept (messages
queued for a rebooting node are still sent at a version it understands); when
none was ever seen, the cap is unknown and the server enforces the version
rule on arrival.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.exceptions import MalformedMessage
from rpclib.serializer import Serializer
from rpclib.transports.base import Driver, Subscription
from rpclib.versioning import Version, parse_version

LOG = logging.getLogger("rpclib.directory")
_PLAIN = Serializer()

# advert header keys
SERVER = "srv"
INTERFACES = "if"
OBJECTS = "obj"
TTL = "ttl"
HOST = "host"
PID = "pid"
STARTED = "since"
"""Wall-clock time (``time.time()``) the server started; adverts of older servers lack it."""


def encode_advert(
    server: str,
    interfaces: Mapping[str | None, Iterable[str]],
    objects: Mapping[str, str],
    ttl: float,
    *,
    started_at: float | None = None,
) -> bytes:
    """The advert a server publishes about itself (``started_at``: when it started serving)."""
    header: dict[str, object] = {
        SERVER: server,
        INTERFACES: [[ns, sorted(set(versions))] for ns, versions in interfaces.items()],
        OBJECTS: dict(objects),
        TTL: float(ttl),
        HOST: socket.gethostname(),
        PID: os.getpid(),
    }
    if started_at is not None:
        header[STARTED] = float(started_at)
    return envelope.encode(_PLAIN, Kind.ADVERT, envelope.new_message_id(), header)


@dataclass(frozen=True, slots=True)
class ServerAdvert:
    """One server's advertised capabilities, as last seen."""

    server: str
    interfaces: Mapping[str | None, tuple[Version, ...]]
    objects: Mapping[str, str]
    ttl: float
    seen_at: float
    host: str = ""
    """Empty when the advert does not say (servers of older rpclib versions)."""
    pid: int = 0
    """0 when the advert does not say."""
    started_at: float | None = None
    """When the server started (``time.time()``); None when the advert does not say."""

    def live(self, now: float) -> bool:
        return now < self.seen_at + self.ttl

    def highest(self, namespace: str | None, major: int) -> Version | None:
        """The highest version of ``namespace`` with ``major`` this server implements."""
        best = None
        for v in self.interfaces.get(namespace, ()):
            if v.major == major and (best is None or v > best):
                best = v
        return best


def decode_advert(server: str, body: bytes) -> ServerAdvert:
    """Parse an advert; MalformedMessage when it is not one."""
    env = envelope.decode(body)
    if env.kind is not Kind.ADVERT:
        raise MalformedMessage(f"expected an ADVERT envelope, got {env.kind.name}")
    h = env.header
    try:
        interfaces: dict[str | None, tuple[Version, ...]] = {
            ns: tuple(parse_version(v) for v in versions) for ns, versions in h[INTERFACES]
        }
        objects = {str(k): str(v) for k, v in h.get(OBJECTS, {}).items()}
        ttl = float(h[TTL])
        started = h.get(STARTED)
        started_at = None if started is None else float(started)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"bad advert from {server!r}: {exc}") from None
    return ServerAdvert(
        server=str(h.get(SERVER, server)),
        interfaces=interfaces,
        objects=objects,
        ttl=ttl,
        seen_at=time.monotonic(),
        host=str(h.get(HOST, "")),
        pid=int(h.get(PID, 0)),
        started_at=started_at,
    )


@dataclass(frozen=True, slots=True)
class Cap:
    """A version cap decision: ``known=False`` means no information (uncapped)."""

    version: Version | None
    known: bool
    reason: str


@dataclass
class TopicView:
    """The live servers of one topic, fed by the driver's advert watch."""

    exchange: str
    topic: str
    servers: dict[str, ServerAdvert] = field(default_factory=dict)
    _last_caps: dict[tuple[str | None, int, str | None], Version] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    subscription: Subscription | None = None

    def on_advert(self, server: str, body: bytes | None) -> None:
        if body is None:
            with self._lock:
                self.servers.pop(server, None)
            LOG.debug("server %s left %s/%s", server, self.exchange, self.topic)
            return
        try:
            advert = decode_advert(server, body)
        except MalformedMessage as exc:
            LOG.error("ignoring bad advert on %s/%s: %s", self.exchange, self.topic, exc)
            return
        with self._lock:
            self.servers[advert.server] = advert

    def live(self, server: str | None = None) -> list[ServerAdvert]:
        """Live adverts (of ``server`` only, when named)."""
        now = time.monotonic()
        with self._lock:
            return [
                a
                for a in self.servers.values()
                if a.live(now) and (server is None or a.server == server)
            ]

    def cap(self, namespace: str | None, major: int, server: str | None = None) -> Cap:
        """The highest version of ``major`` every live (or the named) server honours."""
        live = self.live(server)
        key = (namespace, major, server)
        if live:
            lowest: Version | None = None
            for advert in live:
                best = advert.highest(namespace, major)
                if best is None:
                    have = ", ".join(str(v) for v in advert.interfaces.get(namespace, ())) or "none"
                    return Cap(
                        None,
                        True,
                        f"live server {advert.server} implements {namespace or 'default namespace'}"
                        f" versions {have}, none with major {major}",
                    )
                if lowest is None or best < lowest:
                    lowest = best
            assert lowest is not None
            with self._lock:
                self._last_caps[key] = lowest
            names = ", ".join(sorted(a.server for a in live))
            return Cap(lowest, True, f"lowest version of live servers ({names})")
        with self._lock:
            last = self._last_caps.get(key)
        if last is not None:
            return Cap(last, True, "last version seen; no server is live now")
        return Cap(None, False, "no server has advertised yet")

    def object_manifest(self, server: str | None = None) -> dict[str, str] | None:
        """Per object class, the lowest version the live servers know (None if none is live)."""
        live = self.live(server)
        if not live:
            return None
        manifest: dict[str, str] = {}
        for advert in live:
            for name, version in advert.objects.items():
                have = manifest.get(name)
                if have is None or parse_version(version) < parse_version(have):
                    manifest[name] = version
        return manifest


class Directory:
    """Topic views for one transport, each subscribed on first use."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._views: dict[tuple[str, str], TopicView] = {}
        self._lock = threading.Lock()

    def view(self, exchange: str, topic: str) -> TopicView:
        key = (exchange, topic)
        view = self._views.get(key)
        if view is not None:
            return view
        with self._lock:
            view = self._views.get(key)
            if view is None:
                view = TopicView(exchange, topic)
                view.subscription = self._driver.watch_adverts(exchange, topic, view.on_advert)
                self._views[key] = view
        return view

    def close(self) -> None:
        with self._lock:
            views, self._views = list(self._views.values()), {}
        for view in views:
            if view.subscription is not None:
                view.subscription.close()
