"""Requests to the etcd cluster (etcd3gw over a lean HTTP session), with failover and retries.

One :class:`EtcdClient` per driver. Each call is one HTTP POST to etcd's
JSON gateway (``/v3/...``); a member that does not answer is left for the
next one at once (endpoints.py: a dead one sits out), and once every member
failed the call is retried with backoff until its deadline (``send_timeout``,
or the message's own when sooner), then TransportError. No attempt waits
past the deadline: connect and read timeouts are cut to what is left.
Retrying is only safe for idempotent requests, so callers
say whether a request may be retried; every request the driver sends either
is idempotent or carries a compare that makes a repeat a no-op.

TLS (``etcds://``): the session speaks HTTPS with the URL's SSL context. A
TLS failure retrying cannot fix (untrusted or mismatched certificate, client
certificate refused) fails over to the next member and, once every member
refused, raises :class:`TLSRefused` at once instead of retrying until the
deadline.

Authentication (``user:password@`` in the URL): etcd v3 auth through the
gateway. ``auth/authenticate`` gives a token, sent as the ``Authorization``
header of every request. Tokens end (simple tokens after
``--auth-token-ttl`` seconds unused, every token when etcd restarts), so a
request refused as unauthenticated (``invalid auth token``, ``user name is
empty``, ``permission denied``, ``revision of auth store is old``) gets a
new token and is sent once more: etcd executed nothing it refused, so the
repeat is safe whatever the request. Threads that hit the same stale token
share one re-authentication. Wrong credentials are
:class:`AuthenticationFailed`, never retried.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client

from rpclib import exceptions
from rpclib.exceptions import TransportError
from rpclib.transports.etcd.endpoints import Endpoints
from rpclib.transports.etcd.lean_http import LeanSession, TLSFailure
from rpclib.transports.etcd.naming import prefix_end
from rpclib.transports.etcd.options import Endpoint, EtcdOptions

LOG = logging.getLogger("rpclib.transports.etcd")

Json = dict[str, Any]


class LeaseNotFound(TransportError):
    """A put named a lease etcd no longer has (its owner died or was closed)."""


class Closed(TransportError):
    """The driver was closed."""


class Unreachable(TransportError):
    """No etcd member answered within the deadline."""


class SendTimedOut(Unreachable, exceptions.SendTimedOut):
    """etcd did not take a message before the message's own deadline (a call's timeout)."""


class TLSRefused(Unreachable):
    """The TLS handshake failed with every member (trust, identity, client certificate)."""


class AuthenticationFailed(TransportError):
    """etcd refused the URL's user name or password."""


class NotAuthorized(TransportError):
    """etcd refused a request for lack of authentication or permission, even with a new token."""


TRANSIENT = (
    "leader changed",
    "no leader",
    "timed out",
    "too many requests",
    "proposal dropped",
    "server stopped",
    "not capable",
    "unhealthy cluster",
)
"""etcd's words for a refusal that passes (an election, a member stopping, an overload)."""

AUTH_PROBLEMS = (
    "invalid auth token",
    "user name is empty",
    "permission denied",
    "revision of auth store is old",
)
"""etcd's words for a request whose token is missing, ended or stale."""


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True, slots=True)
class KV:
    """A key-value with the metadata the driver uses."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> KV:
        return cls(
            key=unb64(raw["key"]).decode(),
            value=unb64(raw.get("value", "")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            version=int(raw.get("version", 0)),
            lease=int(raw.get("lease", 0)),
        )


# --- request builders (plain dicts for the JSON gateway) ----------------------------


def put(key: str, value: bytes, lease: int = 0, *, prev_kv: bool = False) -> Json:
    request: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    if prev_kv:
        request["prev_kv"] = True
    return {"request_put": request}


def delete(key: str) -> Json:
    return {"request_delete_range": {"key": b64(key)}}


def delete_prefix(prefix: str) -> Json:
    return {"request_delete_range": {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}}


def range_prefix(prefix: str, *, keys_only: bool = False) -> Json:
    request: Json = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    if keys_only:
        request["keys_only"] = True
    return {"request_range": request}


def range_key(key: str) -> Json:
    return {"request_range": {"key": b64(key)}}


def txn(compare: Sequence[Json], success: Sequence[Json], failure: Sequence[Json] = ()) -> Json:
    return {"compare": list(compare), "success": list(success), "failure": list(failure)}


def nested(compare: Sequence[Json], success: Sequence[Json], failure: Sequence[Json] = ()) -> Json:
    return {"request_txn": txn(compare, success, failure)}


def exists(key: str) -> Json:
    return {"key": b64(key), "target": "VERSION", "result": "GREATER", "version": "0"}


def absent(key: str) -> Json:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_is(key: str, value: bytes) -> Json:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def nothing_created_after(prefix: str, revision: int) -> Json:
    """True when every key under ``prefix`` was created at or before ``revision``."""
    return {
        "key": b64(prefix),
        "range_end": b64(prefix_end(prefix)),
        "target": "CREATE",
        "result": "LESS",
        "create_revision": str(revision + 1),
    }


def kvs_of(response: Mapping[str, Any]) -> list[KV]:
    """The key-values of a range response."""
    return [KV.parse(raw) for raw in response.get("kvs", ())]


def revision_of(response: Mapping[str, Any]) -> int:
    return int(response.get("header", {}).get("revision", 0))


# --- the client --------------------------------------------------------------------


class EtcdClient:
    """Requests to one cluster, failing over between its endpoints."""

    def __init__(self, options: EtcdOptions, url_text: str) -> None:
        self.options = options
        self.url_text = url_text
        self._session = LeanSession(options.tls)
        self._clients = [self._make_client(e) for e in options.endpoints]
        self._endpoints = Endpoints(len(self._clients))
        self._closed = threading.Event()
        self._token: str | None = None
        self._auth_lock = threading.Lock()
        self._auth_disabled_logged = False
        self.authentications = 0
        """How many tokens were obtained (for tests)."""

    def _make_client(self, endpoint: Endpoint) -> Etcd3Client:
        session: Any = self._session  # etcd3gw calls only its post(); see lean_http.py
        return Etcd3Client(
            host=endpoint.hostname,
            port=endpoint.port,
            protocol=self.options.protocol,
            timeout=(self.options.connect_timeout, self.options.request_timeout),  # type: ignore[arg-type]
            api_path="/v3/",
            session=session,
        )

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def session(self) -> LeanSession:
        """The HTTP(S) session (watch streams open their connections through it)."""
        return self._session

    def close(self) -> None:
        self._closed.set()
        self._session.close()

    def endpoint_client(self) -> tuple[int, Etcd3Client]:
        """The member in use and its client (watch streams open their own connections)."""
        index = self._endpoints.current
        return index, self._clients[index]

    def endpoint_failed(self, index: int, *, down: bool) -> None:
        """A watch stream on member ``index`` failed (``down``: could not connect)."""
        self._endpoints.failed(index, down=down)

    def endpoint_answered(self, index: int) -> None:
        self._endpoints.succeeded(index)

    # --- authentication -------------------------------------------------------------

    @property
    def token(self) -> str | None:
        """The auth token requests carry now (None without credentials or with auth off)."""
        return self._token

    def auth_headers(self, token: str | None) -> dict[str, str] | None:
        return {"Authorization": token} if token is not None else None

    def authenticate(self, stale: str | None = None, *, deadline: float | None = None) -> None:
        """Get a new token unless another thread already replaced ``stale``.

        Without credentials this does nothing. If etcd has authentication
        off, requests go without a token (as etcd's own client does) until
        etcd says one is needed.
        """
        credentials = self.options.credentials
        if credentials is None:
            return
        with self._auth_lock:
            if self._token != stale:
                return  # renewed meanwhile by another thread
            try:
                response = self.call(
                    "auth/authenticate",
                    {"name": credentials.user, "password": credentials.password},
                    deadline=deadline,
                    auth=False,
                )
            except TransportError as exc:
                text = str(exc)
                if "authentication is not enabled" in text:
                    if not self._auth_disabled_logged:
                        self._auth_disabled_logged = True
                        LOG.warning(
                            "etcd at %s has authentication off; requests go without a token "
                            "(user %r is used once etcd asks for it)",
                            self.url_text,
                            credentials.user,
                        )
                    self._token = None
                    return
                if "invalid user ID or password" in text or "authentication failed" in text:
                    raise AuthenticationFailed(
                        f"etcd at {self.url_text} refused user {credentials.user!r}: "
                        "wrong user name or password"
                    ) from None
                raise
            token = response.get("token")
            if not isinstance(token, str) or not token:
                raise TransportError(f"etcd at {self.url_text} gave no auth token: {response}")
            self._token = token
            self.authentications += 1
            LOG.debug("etcd: authenticated as %r", credentials.user)

    def not_authorized(self, what: str, text: str) -> TransportError:
        """The error for a request etcd refused for authentication or permission."""
        credentials = self.options.credentials
        if credentials is None:
            return NotAuthorized(
                f"etcd at {self.url_text} refused {what}: {text} (authentication is on: "
                "give user:password in the URL)"
            )
        return NotAuthorized(
            f"etcd at {self.url_text} refused {what} for user {credentials.user!r}: {text} "
            f"(does its role grant read and write on {self.options.prefix}?)"
        )

    # --- requests ---------------------------------------------------------------------

    def call(
        self,
        path: str,
        payload: Json,
        *,
        retry: bool = True,
        deadline: float | None = None,
        auth: bool = True,
    ) -> Json:
        """POST ``payload`` to ``/v3/<path>``; fail over and retry until the deadline.

        No attempt waits past ``deadline`` (``time.monotonic()``; default
        ``send_timeout`` from now). A member that cannot be connected to, or
        leaves a request unanswered for the stall timeout, is left for the
        next member at once; a refusal etcd gives while it elects a leader
        (503, "leader changed", "no leader", "request timed out") too, and once
        every member failed the request backs off. A request refused as
        unauthenticated is sent once more with a new token (``auth=False``
        sends none: authentication itself).
        """
        options = self.options
        if deadline is None:
            deadline = time.monotonic() + options.send_timeout
        pause = options.retry_backoff
        renewed = False
        refused_tls = 0
        stalls = 0
        tried: set[int] = set()
        reason = "no member was asked in time"
        first = ""  # the first failure's reason (a final timeout must not hide a refusal)
        while True:
            if self._closed.is_set():
                raise Closed(f"the etcd driver for {self.url_text} is closed")
            index = self._endpoints.current
            client = self._clients[index]
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(
                    f"etcd at {self.url_text} failed on {path}: {_reasons(reason, first)}"
                )
            # a write a member forwarded to a leader that just died waits for etcd's own
            # request timeout (7 s): give up on it sooner, and longer once every member stalled
            stall = options.stall_timeout
            if stalls:
                stall *= 2 ** (stalls // len(self._clients))
            stall = min(stall, options.request_timeout)
            self._session.limit(min(options.connect_timeout, left), min(stall, left))
            token = self._token if auth else None
            try:
                if token is None:
                    result: Json = client.post(client.get_url(path), json=payload)
                else:
                    result = client.post(
                        client.get_url(path), json=payload, headers={"Authorization": token}
                    )
                self._endpoints.succeeded(index)
                return result
            except (
                etcd_errors.ConnectionFailedError,
                etcd_errors.ConnectionTimeoutError,
                etcd_errors.InternalServerError,
            ) as exc:
                if self._closed.is_set():
                    raise Closed(f"the etcd driver for {self.url_text} is closed") from None
                cause = exc.__context__
                where = f"{client.host}:{client.port}"
                if isinstance(cause, TLSFailure):
                    refused_tls += 1
                    if refused_tls >= len(self._clients):
                        raise TLSRefused(f"etcd at {self.url_text}: {cause}") from cause
                    LOG.warning("etcd %s: %s", where, cause)
                    self._endpoints.failed(index, down=True)
                    continue
                reason = _at(where, _reason(exc))
                first = first or reason
                down = isinstance(cause, requests.ConnectionError)  # incl. connect timeouts
                stalled = isinstance(cause, requests.Timeout) and not down
                stalls += stalled
                failure: BaseException = exc
            except etcd_errors.Etcd3Exception as exc:
                text = _reason(exc)
                if "lease not found" in text:
                    raise LeaseNotFound(f"etcd: {text}") from exc
                if auth and is_auth_problem(text):
                    if renewed or self.options.credentials is None:
                        raise self.not_authorized(path, text) from exc
                    renewed = True  # etcd executed nothing: sending it again is safe
                    LOG.info("etcd refused %s (%s); authenticating again", path, text)
                    self.authenticate(stale=token, deadline=deadline)
                    continue
                if "CommonName of client sending a request against gateway" in text:
                    raise TLSRefused(
                        f"etcd at {self.url_text} refuses a client certificate with a "
                        "CommonName on its JSON gateway while authentication is on (etcd "
                        "would not use it as the user): use a client certificate without a "
                        "CN (see ssl_cert)"
                    ) from exc
                if not is_transient(text):
                    if "HTTP request to an HTTPS server" in text:
                        text += " (use etcds:// or ssl=true)"
                    raise TransportError(f"etcd rejected {path}: {text}") from exc
                where = f"{client.host}:{client.port}"
                reason = _at(where, text)
                first = first or reason
                down = False
                failure = exc
            except requests.RequestException as exc:  # e.g. a session closed under us
                if self._closed.is_set():
                    raise Closed(f"the etcd driver for {self.url_text} is closed") from None
                raise TransportError(f"etcd request {path} failed: {exc}") from exc
            self._endpoints.failed(index, down=down)
            if not retry:
                raise Unreachable(f"etcd at {where} failed on {path}: {reason}") from failure
            tried.add(index)
            if self._endpoints.current not in tried:
                LOG.debug("etcd %s; trying the next member", reason)
                continue  # another member, not asked yet: at once
            tried.clear()  # every member failed: back off before the next round
            if time.monotonic() + pause > deadline:
                raise Unreachable(
                    f"etcd at {self.url_text} failed on {path}: {_reasons(reason, first)}"
                ) from failure
            LOG.debug("etcd %s; retrying in %.2fs", reason, pause)
            self._closed.wait(pause)
            pause = min(pause * 2, options.retry_backoff_max)

    # --- conveniences ----------------------------------------------------------------

    def txn(self, request: Json, *, retry: bool = True, deadline: float | None = None) -> Json:
        return self.call("kv/txn", request, retry=retry, deadline=deadline)

    def range_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under ``prefix`` and the revision read at."""
        response = self.call("kv/range", range_prefix(prefix)["request_range"])
        return kvs_of(response), revision_of(response)

    def grant(self, ttl: int) -> int:
        response = self.call("lease/grant", {"TTL": str(ttl), "ID": "0"})
        return int(response["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; its remaining TTL (<= 0 when it is gone)."""
        response = self.call("lease/keepalive", {"ID": str(lease)}, retry=False)
        return int(response.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self.call("kv/lease/revoke", {"ID": str(lease)})
        except LeaseNotFound:
            pass
        except TransportError as exc:
            if "not found" not in str(exc):
                raise


def _at(where: str, text: str) -> str:
    """``where: text``, unless the text already starts with where (the session's errors do)."""
    return text if text.startswith(where) else f"{where}: {text}"


def _reasons(last: str, first: str) -> str:
    """The last failure's reason, and the first's when it differs."""
    return last if not first or first == last else f"{last} (first: {first})"


def is_transient(text: str) -> bool:
    """Whether etcd's error ``text`` is a refusal worth retrying (see TRANSIENT)."""
    return any(word in text for word in TRANSIENT)


def is_auth_problem(text: str) -> bool:
    """Whether etcd's error ``text`` says the request's token is missing, ended or stale."""
    return any(problem in text for problem in AUTH_PROBLEMS)


def _reason(exc: BaseException) -> str:
    """What etcd (or the connection) said: the gateway's ``error`` text, then the HTTP reason.

    etcd3gw keeps the response body in ``detail_text`` (the gateway's JSON
    ``{"error": ..., "code": ...}``) and only the HTTP reason in ``args``.
    """
    parts: list[str] = []
    detail = getattr(exc, "detail_text", None)
    if detail:
        text = str(detail)
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
        parts.append(text.strip())
    for arg in exc.args:
        if arg and str(arg) not in parts:
            parts.append(str(arg))
    return "; ".join(parts)[:300] or type(exc).__name__
