"""Requests to the etcd cluster (etcd3gw over a lean HTTP session), with failover and retries.

One :class:`EtcdClient` per driver. Each call is one HTTP POST to etcd's
JSON gateway (``/v3/...``); a member that does not answer is skipped for the
next one and the call retried with backoff until ``send_timeout``, then
TransportError. Retrying is only safe for idempotent requests, so callers
say whether a request may be retried; every request the driver sends either
is idempotent or carries a compare that makes a repeat a no-op.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client

from rpclib.exceptions import TransportError
from rpclib.transports.etcd.lean_http import LeanSession
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


def new_session() -> requests.Session:
    """An HTTP session for etcd: proxy variables and .netrc are ignored.

    requests would otherwise scan the whole environment for proxy settings on
    every request, a good part of a round trip's CPU; etcd endpoints are
    reached directly.
    """
    session = requests.Session()
    session.trust_env = False
    return session


class EtcdClient:
    """Requests to one cluster, failing over between its endpoints."""

    def __init__(self, options: EtcdOptions, url_text: str) -> None:
        self.options = options
        self.url_text = url_text
        self._session = LeanSession()
        self._clients = [self._make_client(e) for e in options.endpoints]
        self._current = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def _make_client(self, endpoint: Endpoint) -> Etcd3Client:
        session: Any = self._session  # etcd3gw calls only its post(); see lean_http.py
        return Etcd3Client(
            host=endpoint.hostname,
            port=endpoint.port,
            timeout=(self.options.connect_timeout, self.options.request_timeout),  # type: ignore[arg-type]
            api_path="/v3/",
            session=session,
        )

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        self._session.close()

    def endpoint_client(self) -> Etcd3Client:
        """The client of the endpoint in use (for opening watch streams on their own session)."""
        return self._clients[self._current]

    def next_endpoint(self) -> None:
        with self._lock:
            self._current = (self._current + 1) % len(self._clients)

    def call(
        self, path: str, payload: Json, *, retry: bool = True, deadline: float | None = None
    ) -> Json:
        """POST ``payload`` to ``/v3/<path>``; retry unreachable members until the deadline."""
        if deadline is None:
            deadline = time.monotonic() + self.options.send_timeout
        pause = self.options.retry_backoff
        while True:
            if self._closed.is_set():
                raise Closed(f"the etcd driver for {self.url_text} is closed")
            client = self._clients[self._current]
            try:
                result: Json = client.post(client.get_url(path), json=payload)
                return result
            except (
                etcd_errors.ConnectionFailedError,
                etcd_errors.ConnectionTimeoutError,
                etcd_errors.InternalServerError,
            ) as exc:
                if self._closed.is_set():
                    raise Closed(f"the etcd driver for {self.url_text} is closed") from None
                if not retry or time.monotonic() + pause > deadline:
                    raise Unreachable(
                        f"etcd at {client.host}:{client.port} failed on {path}: {_reason(exc)}"
                    ) from exc
                LOG.debug("etcd %s:%s: %s; retrying", client.host, client.port, _reason(exc))
                if len(self._clients) > 1:
                    self.next_endpoint()
                self._closed.wait(pause)
                pause = min(pause * 2, self.options.retry_backoff_max)
            except etcd_errors.Etcd3Exception as exc:
                text = _reason(exc)
                if "lease not found" in text:
                    raise LeaseNotFound(f"etcd: {text}") from exc
                raise TransportError(f"etcd rejected {path}: {text}") from exc
            except requests.RequestException as exc:  # e.g. a session closed under us
                if self._closed.is_set():
                    raise Closed(f"the etcd driver for {self.url_text} is closed") from None
                raise TransportError(f"etcd request {path} failed: {exc}") from exc

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


def _reason(exc: BaseException) -> str:
    args = [str(a) for a in exc.args if a]
    return "; ".join(args)[:300] or type(exc).__name__
