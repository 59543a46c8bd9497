"""A lean HTTP(S) session for etcd3gw's requests: keep-alive ``http.client`` per thread.

etcd3gw takes any ``session`` with requests' ``post``; a request through
``requests`` costs about three times the CPU of the same request over a
kept-alive ``http.client`` connection (measured: ~960 vs ~280 µs per request
on the project machine), and the driver's throughput on a busy machine is
bounded by CPU. This session does only what etcd3gw's ``post`` needs: JSON
in, status/reason/text/json out, extra headers (the auth token), timeouts,
and failures raised as requests' own exceptions (``Timeout``,
``ConnectionError``) so etcd3gw maps them to its errors as usual. Each
thread keeps one connection per endpoint; a broken connection is dropped and
the error raised (the driver's requests are all safe to retry). etcd3gw
gives every request the same timeouts; :meth:`LeanSession.limit` lowers
them for the requests a thread makes from then on (the driver's per-attempt
stall timeout, and what is left of a send's deadline).

``https://`` URLs go over TLS with the session's ``ssl.SSLContext`` (the
same context for every connection, so the handshake's session cache is
shared). A TLS failure that will not go away by retrying (the server's
certificate is not trusted or does not match, the server refused our client
certificate, the endpoint does not speak TLS) is raised as
:class:`TLSFailure`; a connection that broke mid-way is an ordinary
``ConnectionError``.

Watches are long-lived streaming responses: :meth:`LeanSession.stream` opens
one on a connection of its own (:class:`LeanStream`).
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import os
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests

_Key = tuple[str, str, int]
"""(scheme, host, port) of a pooled connection."""
_PERMANENT_WORDS = (
    "CERTIFICATE",
    "UNKNOWN_CA",
    "VERSION",
    "RECORD_LAYER",
    "PROTOCOL",
    "HANDSHAKE_FAILURE",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS",
)
"""Words of OpenSSL's reason for a TLS failure about trust, identity or protocol."""


class TLSFailure(requests.exceptions.SSLError):
    """A TLS handshake failed in a way retrying will not fix (trust, identity, protocol)."""


class LeanResponse:
    """The part of ``requests.Response`` etcd3gw reads."""

    __slots__ = ("content", "reason", "status_code")

    def __init__(self, status_code: int, reason: str, content: bytes) -> None:
        self.status_code = status_code
        self.reason = reason
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class LeanSession:
    """``post()`` over a kept-alive connection per thread and endpoint; HTTPS with ``tls``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []
        self._closed = False

    def _new_connection(
        self, scheme: str, host: str, port: int, timeout: float | None
    ) -> http.client.HTTPConnection:
        if scheme == "https":
            if self.tls is None:
                raise requests.exceptions.InvalidURL(
                    f"https://{host}:{port}: this session has no TLS context"
                )
            return _TLSConnection(host, port, timeout=timeout, context=self.tls)
        if scheme != "http":
            raise requests.exceptions.InvalidURL(f"unsupported scheme {scheme!r}")
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def limit(self, connect: float, read: float) -> None:
        """From now on, this thread's requests wait at most ``connect`` to connect, ``read``
        to read (each request's caller sets its own: a plain call, cheaper than a context)."""
        self._local.limits = (connect, read)

    def _timeouts(self, timeout: Any) -> tuple[float | None, float | None]:
        connect, read = _timeouts(timeout)
        limits: tuple[float, float] | None = getattr(self._local, "limits", None)
        if limits is not None:
            connect = limits[0] if connect is None else min(connect, limits[0])
            read = limits[1] if read is None else min(read, limits[1])
        return connect, read

    def _connection(self, key: _Key, timeout: Any) -> http.client.HTTPConnection:
        pool: dict[_Key, http.client.HTTPConnection] | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        connection = pool.get(key)
        if connection is None:
            connect, _ = _timeouts(timeout)
            connection = self._new_connection(*key, connect)
            with self._lock:
                if self._closed:
                    raise requests.exceptions.ConnectionError("session closed")
                self._all.append(connection)
            pool[key] = connection
        return connection

    def _drop(self, key: _Key, connection: http.client.HTTPConnection) -> None:
        connection.close()
        pool = getattr(self._local, "pool", {})
        if pool.get(key) is connection:
            del pool[key]
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)

    def post(
        self,
        url: str,
        *args: Any,
        json: Any = None,
        data: Any = None,
        timeout: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> LeanResponse:
        key, path = _target(url)
        body = _body(json, data)
        connection = self._connection(key, timeout)
        connect, read = self._timeouts(timeout)
        fresh = connection.sock is None
        if fresh:
            connection.timeout = connect
            try:
                connection.connect()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key, connection)
                raise _translate(key, exc, connecting=True) from exc
        try:
            connection.sock.settimeout(read)
            connection.request("POST", path, body=body, headers=_headers(headers))
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(key, connection)
            if fresh and key[0] == "http" and isinstance(exc, http.client.RemoteDisconnected):
                # what etcd serving TLS does to plain HTTP (a kept-alive connection
                # closed by the server is the ordinary case, hence "fresh" only)
                raise requests.exceptions.ConnectionError(
                    f"{key[1]}:{key[2]}: closed without an answer to plain HTTP "
                    "(does the endpoint want TLS? use etcds://)"
                ) from exc
            raise _translate(key, exc) from exc
        if response.will_close:
            self._drop(key, connection)
        return LeanResponse(response.status, response.reason, content)

    def stream(
        self,
        url: str,
        *,
        json: Any,
        connect_timeout: float | None,
        headers: Mapping[str, str] | None = None,
    ) -> LeanStream:
        """POST ``json`` and return the response as a stream (a connection of its own).

        The connection has ``connect_timeout`` to connect (and shake hands)
        and send the request; the response is then read without a timeout:
        the caller watches for silence and calls :meth:`LeanStream.abort`.
        """
        key, path = _target(url)
        with self._lock:
            if self._closed:
                raise requests.exceptions.ConnectionError("session closed")
        connection = self._new_connection(*key, connect_timeout)
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _translate(key, exc, connecting=True) from exc
        try:
            connection.request("POST", path, body=_body(json, None), headers=_headers(headers))
            response = connection.getresponse()
            connection.sock.settimeout(None)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _translate(key, exc) from exc
        return LeanStream(key, connection, response)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()


class LeanStream:
    """A streaming response: its status, then its body chunk by chunk until it ends."""

    def __init__(
        self, key: _Key, connection: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        self._key = key
        self._connection = connection
        self._response = response
        self.status_code = response.status
        self.reason = response.reason
        self._lock = threading.Lock()  # abort() never touches a descriptor close() released
        self._fd = -1
        with contextlib.suppress(OSError, AttributeError):
            self._fd = connection.sock.fileno()

    def read_error(self, limit: int = 4096) -> str:
        """The (start of the) body of a refused request."""
        try:
            return self._response.read(limit).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            return ""

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives; raises ``ConnectionError`` when the connection breaks."""
        while True:
            try:
                chunk = self._response.read1(65536)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _translate(self._key, exc) from exc
            if not chunk:
                return
            yield chunk

    def abort(self) -> None:
        """Shut the socket down from any thread, so a reader blocked in :meth:`chunks` wakes.

        Done on a duplicate of the descriptor: closing or shutting down the
        (TLS) socket object itself under a reading thread is not safe.
        """
        with self._lock:
            if self._fd < 0:
                return
            try:
                dup = socket.socket(fileno=os.dup(self._fd))
            except OSError:  # already closed
                return
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            dup.close()

    def close(self) -> None:
        with self._lock:
            self._fd = -1
            with contextlib.suppress(Exception):
                self._response.close()
            self._connection.close()


def _target(url: str) -> tuple[_Key, str]:
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname or "localhost", port), path


_SETTLE_WAIT: Final = 0.25
"""Seconds a new TLS 1.3 connection waits for what the server sends after the handshake."""


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS that reads the server's first records before the first request.

    In TLS 1.3 the client's handshake ends before the server has checked the
    client certificate. A server that refuses it sends an alert and closes; a
    client that already wrote its request then often reads a reset instead of
    the alert, which looks like a network fault and is retried. Reading first
    (session tickets arrive at once; an alert too) makes the refusal the alert
    it is: a clear, permanent error.
    """

    def connect(self) -> None:
        super().connect()
        sock = self.sock
        if not isinstance(sock, ssl.SSLSocket) or sock.version() != "TLSv1.3":
            return
        timeout = sock.gettimeout()
        wait = _SETTLE_WAIT if timeout is None else min(_SETTLE_WAIT, timeout)
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            return
        sock.setblocking(False)
        try:
            data = sock.recv(1)
        except ssl.SSLWantReadError:
            return  # only session tickets: the server took us
        finally:
            sock.settimeout(timeout)
        if not data:
            raise ConnectionResetError("the server closed the connection after the TLS handshake")
        raise ConnectionError(f"the server sent {data!r} before any request")


def _body(json: Any, data: Any) -> bytes | None:
    body = jsonlib.dumps(json).encode() if json is not None else data
    if isinstance(body, str):
        body = body.encode()
    return body


def _headers(extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if extra:
        headers.update(extra)
    return headers


def _translate(
    key: _Key, exc: BaseException, *, connecting: bool = False
) -> requests.RequestException:
    """requests' exception for a failed request to ``key``."""
    where = f"{key[1]}:{key[2]}"
    if isinstance(exc, TimeoutError):
        if connecting:  # a ConnectionError too: the member may be gone
            return requests.exceptions.ConnectTimeout(f"{where}: connecting: {exc}")
        return requests.exceptions.Timeout(f"{where}: {exc}")
    if isinstance(exc, ssl.SSLError) and _permanent(exc):
        return TLSFailure(f"TLS with {where} failed: {_ssl_reason(exc)}")
    if connecting and key[0] == "https" and isinstance(exc, ssl.SSLEOFError | ConnectionResetError):
        # what a plain-HTTP etcd does to a TLS hello (a close, or a reset when the hello was
        # left unread); also what a restarting one may do, so it stays an ordinary
        # (retried) connection error, with the likely cause
        return requests.exceptions.ConnectionError(
            f"{where}: the server closed the connection during the TLS handshake "
            f"({exc.__class__.__name__}; does the endpoint serve TLS?)"
        )
    return requests.exceptions.ConnectionError(f"{where}: {exc!r}")


def _permanent(exc: ssl.SSLError) -> bool:
    """A TLS error about trust, identity or protocol (not a connection cut mid-way)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return False
    reason = (exc.reason or "").upper()
    return any(word in reason for word in _PERMANENT_WORDS)


def _ssl_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = exc.verify_message or str(exc)
        return f"the server's certificate was not accepted: {text} (see ssl_ca, ssl_verify)"
    reason = exc.reason or str(exc)
    upper = reason.upper()
    if "ALERT" in upper and ("CERTIFICATE" in upper or "UNKNOWN_CA" in upper):
        # an alert is the server's verdict on our certificate: etcd 3.4 says "bad
        # certificate", etcd 3.5 (newer Go) "unknown CA" for one from a CA it does not trust
        return f"the server refused the client certificate: {reason} (see ssl_cert, ssl_key)"
    if "WRONG_VERSION" in reason.upper() or "RECORD_LAYER" in reason.upper():
        return f"{reason} (does the endpoint serve TLS?)"
    return reason


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    if isinstance(timeout, tuple):
        return timeout[0], timeout[1]
    return timeout, timeout
