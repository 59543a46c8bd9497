"""Watch streams that never go quiet: resume, resync after compaction, liveness echo.

A :class:`PrefixWatch` keeps one etcd watch on a key prefix for as long as it
runs, feeding a :class:`WatchSink`:

- It starts with a read of the prefix (``sink.snapshot``) and watches from
  the revision after it, so nothing between the read and the watch is missed.
- When the stream ends or errors, it re-opens it from the revision after the
  last one it handled: no event is missed, none is delivered twice.
- When etcd has compacted that revision away (the watch is cancelled with
  ``compact_revision``), it reads the prefix again and resumes after that
  read; the sink reconciles the snapshot with what it already knew.
- A stream that went silent is detected: after ``watch_idle`` seconds without
  a byte, the watch puts an echo key under its own prefix (``h/<watch>``); if
  neither the echo nor anything else arrives within ``watch_timeout``, the
  stream is torn down and re-opened (from the last revision). etcd's own
  progress notifications are requested too and count as signs of life.
- With authentication, the stream is opened with the client's token. etcd
  checks it when the watch is created (an open stream outlives its token);
  a watch refused for its token is re-opened at once with a new one.

Streams go over the client's session (HTTPS with the URL's TLS context), one
connection each. Sinks are called from the watch's thread, one call at a time.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests

from rpclib.exceptions import TransportError
from rpclib.transports.etcd.client import KV, EtcdClient, b64, is_auth_problem, unb64
from rpclib.transports.etcd.lean_http import LeanStream
from rpclib.transports.etcd.naming import prefix_end

LOG = logging.getLogger("rpclib.transports.etcd")
ECHO = "h/"
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Event:
    """One change under a watched prefix; ``kv.value`` is empty for deletes."""

    deleted: bool
    kv: KV


class WatchSink(Protocol):
    def snapshot(self, kvs: list[KV], revision: int) -> None:
        """Everything under the prefix at ``revision`` (first, and after a compaction)."""

    def events(self, events: list[Event]) -> None:
        """Changes in revision order (echo keys already filtered out)."""

    def connection(self, state: str) -> None:
        """``"disconnected"`` when the stream broke, ``"reconnected"`` once it is back."""


class _Compacted(Exception):
    """The revision to resume from was compacted away."""


class _Unauthenticated(TransportError):
    """etcd refused to create the watch for its token (missing, ended, stale)."""


class PrefixWatch:
    """One self-healing watch on ``prefix``; see the module docstring."""

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        sink: WatchSink,
        *,
        name: str,
        echo: Callable[[str], None],
        filters: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.sink = sink
        self.name = name
        self.echo_key = f"{prefix}{ECHO}w{os.getpid()}-{next(_ids)}"
        self._echo = echo
        self._filters = list(filters)
        self.revision = 0
        self.resyncs = 0
        """How many times the prefix was re-read after a compaction (for tests)."""
        self.reconnects = 0
        """How many times the stream was re-established (for tests)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream_now: LeanStream | None = None
        self._token_used: str | None = None
        self._renewed_token = False
        """A new token was fetched since the last watch etcd created (renew once, then back off)."""
        self._last_data = time.monotonic()
        self._echo_sent_at: float | None = None
        self._echoed = False
        self._connected = False
        """A stream is established (etcd created the watch)."""
        self._member = 0
        """The member the current (or last) stream was opened on."""
        self._up = False
        """What the sink was last told: up from start() (etcd answered its read) until a
        stream attempt fails, again once etcd creates a watch ("disconnected" and
        "reconnected" alternate, whether or not the first stream was ever created)."""
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {name}", daemon=True)

    def start(self) -> None:
        """Read the prefix (the sink gets the snapshot on this thread), then watch on."""
        kvs, revision = self.client.range_prefix(self.prefix)
        self.revision = revision
        self.sink.snapshot([kv for kv in kvs if not self._is_echo(kv.key)], revision)
        self._up = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._abort()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        if self._echoed:  # the echo key would otherwise stay until the driver's lease ends
            try:
                self.client.call("kv/deleterange", {"key": b64(self.echo_key)})
            except TransportError as exc:
                LOG.debug("watch %s: could not delete its echo key: %s", self.name, exc)

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    # --- liveness (called by the driver's ticker) -----------------------------------------

    def check(self, now: float, idle: float, timeout: float) -> None:
        """Echo into a quiet stream; tear down one whose echo never came back."""
        if self._stop.is_set() or not self._connected:
            return
        sent = self._echo_sent_at
        if sent is None:
            if now - self._last_data >= idle:
                self._echo_sent_at = now
                self._echoed = True
                # on a thread of its own: a hung etcd must not hold up the caller (the
                # driver's ticker, which also keeps the lease alive)
                threading.Thread(target=self._send_echo, daemon=True).start()
        elif self._last_data > sent:
            self._echo_sent_at = None
        elif now - sent >= timeout:
            LOG.warning("watch %s went silent for %.1fs; re-establishing it", self.name, now - sent)
            self._echo_sent_at = None
            self._abort()

    def _send_echo(self) -> None:
        try:
            self._echo(self.echo_key)
        except TransportError as exc:
            LOG.debug("watch %s: echo failed: %s", self.name, exc)

    def break_stream(self) -> None:
        """Tear the current stream down (it is re-opened from the last revision); for tests."""
        self._abort()

    # --- the stream ---------------------------------------------------------------------

    def _is_echo(self, key: str) -> bool:
        return key.startswith(self.prefix + ECHO)

    def _run(self) -> None:
        pause = self.client.options.retry_backoff
        resync = False
        while not self._stop.is_set():
            try:
                if resync:
                    kvs, revision = self.client.range_prefix(self.prefix)
                    self.revision = revision
                    self.resyncs += 1
                    LOG.info("watch %s: resynchronised at revision %d", self.name, revision)
                    self.sink.snapshot([kv for kv in kvs if not self._is_echo(kv.key)], revision)
                    resync = False
                self._stream()
                pause = self.client.options.retry_backoff
            except _Compacted:
                resync = True
            except _Unauthenticated as exc:
                if self._stop.is_set():
                    break
                if self._renew_token(exc):
                    continue  # re-open at once with the new token
                self.client.endpoint_failed(self._member, down=False)
                self._stop.wait(pause)
                pause = min(pause * 2, self.client.options.retry_backoff_max)
            except (TransportError, requests.RequestException, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                LOG.info("watch %s: stream broke (%s); resuming", self.name, exc)
                down = isinstance(exc, requests.ConnectionError | OSError)
                self.client.endpoint_failed(self._member, down=down)
                if self._connected and self.client.endpoint_client()[0] != self._member:
                    continue  # a stream that worked broke: re-open on the next member at once
                self._stop.wait(pause)
                pause = min(pause * 2, self.client.options.retry_backoff_max)
            except Exception:
                LOG.exception("watch %s: sink failed; resuming", self.name)
                self._stop.wait(pause)
            finally:
                self._close_response()
                self._connected = False
                if self._up and not self._stop.is_set():
                    self._up = False
                    self._report("disconnected")

    def _renew_token(self, exc: _Unauthenticated) -> bool:
        """After an auth refusal: get a new token once; False when that cannot help."""
        if self.client.options.credentials is None or self._renewed_token:
            refusal = self.client.not_authorized("the watch", str(exc))
            LOG.warning("watch %s: %s", self.name, refusal)
            return False
        self._renewed_token = True
        LOG.info("watch %s: %s; authenticating again", self.name, exc)
        try:
            self.client.authenticate(stale=self._token_used)
        except TransportError as error:
            LOG.warning("watch %s: authentication failed: %s", self.name, error)
            return False
        return True

    def _stream(self) -> None:
        self._member, endpoint = self.client.endpoint_client()
        create: dict[str, Any] = {
            "key": b64(self.prefix),
            "range_end": b64(prefix_end(self.prefix)),
            "start_revision": str(self.revision + 1),
            "progress_notify": True,
        }
        if self._filters:
            create["filters"] = self._filters
        self._token_used = token = self.client.token
        stream = self.client.session.stream(
            endpoint.get_url("/watch"),
            json={"create_request": create},
            connect_timeout=self.client.options.connect_timeout,
            headers=self.client.auth_headers(token),
        )
        with self._lock:
            self._stream_now = stream
        if self._stop.is_set():
            return
        if stream.status_code != 200:
            text = stream.read_error()[:200]
            if is_auth_problem(text):
                raise _Unauthenticated(text)
            raise TransportError(f"watch refused: {stream.status_code} {text}")
        self._last_data = time.monotonic()
        for message in _messages(stream):
            self._last_data = time.monotonic()
            if self._stop.is_set():
                return
            self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        if "error" in message:
            raise TransportError(f"watch error: {message['error']}")
        result = message.get("result", {})
        # before "created": etcd answers a create it refuses with created *and* canceled
        if int(result.get("compact_revision", 0)):
            LOG.info(
                "watch %s: revision %d compacted (now %s); re-reading the prefix",
                self.name,
                self.revision + 1,
                result["compact_revision"],
            )
            raise _Compacted()
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            if is_auth_problem(reason):
                raise _Unauthenticated(reason)
            raise TransportError(f"watch cancelled by etcd: {reason}")
        if result.get("created"):
            self.client.endpoint_answered(self._member)
            self.reconnects += 1
            self._renewed_token = False
            self._connected = True
            if not self._up:
                self._up = True
                self._report("reconnected")
            return
        raw_events = result.get("events")
        if not raw_events:  # a progress notification: every event up to it has been sent
            header_revision = int(result.get("header", {}).get("revision", 0))
            self.revision = max(self.revision, header_revision)
            return
        events = []
        top = self.revision
        for raw in raw_events:
            kv = raw["kv"]
            revision = int(kv.get("mod_revision", 0))
            top = max(top, revision)
            if revision <= self.revision:
                continue  # already handled (cannot happen when resuming correctly; be safe)
            key = unb64(kv["key"]).decode()
            if self._is_echo(key):
                continue
            events.append(Event(raw.get("type") == "DELETE", KV.parse(kv)))
        if events:
            self.sink.events(events)
        self.revision = top

    def _report(self, state: str) -> None:
        try:
            self.sink.connection(state)
        except Exception:
            LOG.exception("watch %s: connection handler failed", self.name)

    def _abort(self) -> None:
        with self._lock:
            stream = self._stream_now
        if stream is not None:
            stream.abort()

    def _close_response(self) -> None:
        with self._lock:
            stream, self._stream_now = self._stream_now, None
        if stream is not None:
            stream.abort()
            stream.close()


def _messages(stream: LeanStream) -> Iterator[dict[str, Any]]:
    """The JSON messages of a gateway watch stream (one per line, split across chunks)."""
    pending: list[bytes] = []
    for chunk in stream.chunks():
        if b"\n" not in chunk:
            pending.append(chunk)  # part of a large message: join once it is complete
            continue
        pending.append(chunk)
        *lines, tail = b"".join(pending).split(b"\n")
        pending = [tail] if tail else []
        for line in lines:
            if line.strip():
                message: dict[str, Any] = json.loads(line)
                yield message
    raise TransportError("watch stream ended")
