"""The metadata service beside a compute node: what a guest learns about itself.

Guests ask ``http://169.254.169.254/`` (as on Nova and EC2; the address and
port are settings) in the two formats cloud-init and cirros read:

- OpenStack: ``/openstack/latest/meta_data.json`` (uuid, name, hostname,
  public_keys, keys, project_id, launch_index) and ``/openstack/latest/user_data``;
- EC2: ``/latest/meta-data/`` (a listing) with ``instance-id`` (the uuid),
  ``hostname``, ``local-hostname``, ``local-ipv4``, ``public-keys/``,
  ``public-keys/0/openssh-key``, and ``/latest/user-data``; ``2009-04-04``
  (what cirros and cloud-init ask for) is the same as ``latest``.

Who asks is the request's source address and nothing else (no header is
believed): the service asks the conductor, over rpclib as this compute node,
for the live instance with that address *on this host*; the conductor
answers only about the authenticated sender's own host. An address with no
instance gets 404. Answers are cached for a few seconds (positive and
negative separately), and every answer is logged with the instance's uuid.

That a guest cannot take another guest's address (and so its metadata) is
the network's job: libvirt traffic filters on the guest's port, which are not
built yet (docs/metadata.md).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import rpclib
from services.objects import Instance

LOG = logging.getLogger("services.compute.metadata")

DEFAULT_ADDRESS = "169.254.169.254"
DEFAULT_PORT = 80
EC2_VERSIONS = ("2009-04-04", "latest")
OPENSTACK_VERSIONS = ("latest",)
_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")

Lookup = Callable[[str], Instance | None]
"""The live instance at a source address on this host, or None (the conductor's answer)."""


@dataclass(frozen=True)
class Answer:
    """One response: status, body and content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def hostname(instance: Instance) -> str:
    """A DNS label from the instance's name (lower case, [a-z0-9-], at most 63)."""
    label = _HOSTNAME_BAD.sub("-", str(instance.name).lower()).strip("-")[:63].strip("-")
    return label or f"instance-{str(instance.uuid)[:8]}"


def meta_data_json(instance: Instance) -> dict[str, Any]:
    """The OpenStack ``meta_data.json`` document."""
    key = instance.key_data
    return {
        "uuid": str(instance.uuid),
        "name": instance.name,
        "hostname": hostname(instance),
        "project_id": instance.project_id,
        "launch_index": 0,
        "availability_zone": "nova",
        "meta": dict(instance.metadata or {}),
        "public_keys": {"default": key} if key else {},
        "keys": [{"name": "default", "type": "ssh", "data": key}] if key else [],
    }


def _text(lines: list[str]) -> Answer:
    return Answer(200, "\n".join(lines).encode())


def _user_data(instance: Instance) -> Answer:
    if instance.user_data is None:
        return Answer(404, b"no user data\n")
    # stored base64-encoded, as Nova's; the guest gets the bytes
    return Answer(200, base64.b64decode(instance.user_data), "application/octet-stream")


def _ec2(instance: Instance, rest: list[str]) -> Answer:
    key = instance.key_data
    if rest in ([], [""]):
        return _text(["meta-data/", "user-data"] if instance.user_data else ["meta-data/"])
    if rest[0] == "user-data" and len(rest) == 1:
        return _user_data(instance)
    if rest[0] != "meta-data":
        return Answer(404, b"not found\n")
    item = [p for p in rest[1:] if p]
    values = {
        "instance-id": str(instance.uuid),
        "hostname": hostname(instance),
        "local-hostname": hostname(instance),
        "local-ipv4": instance.ip_address or "",
        "ami-launch-index": "0",
    }
    if not item:
        return _text([*values, *(["public-keys/"] if key else [])])
    if len(item) == 1 and item[0] in values:
        return _text([values[item[0]]])
    if item[0] == "public-keys" and key:
        if len(item) == 1:
            return _text(["0=default"])
        if item[1] == "0" and len(item) == 2:
            return _text(["openssh-key"])
        if item[1:] == ["0", "openssh-key"]:
            return Answer(200, (key + "\n").encode())
    return Answer(404, b"not found\n")


def _openstack(instance: Instance, rest: list[str]) -> Answer:
    if rest in ([], [""]):
        return _text(list(OPENSTACK_VERSIONS))
    if rest[0] not in OPENSTACK_VERSIONS:
        return Answer(404, b"not found\n")
    item = "/".join(p for p in rest[1:] if p)
    if item == "":
        files = ["meta_data.json", "vendor_data.json"]
        return _text([*files, "user_data"] if instance.user_data else files)
    if item == "meta_data.json":
        return Answer(200, json.dumps(meta_data_json(instance)).encode(), "application/json")
    if item == "vendor_data.json":
        return Answer(200, b"{}", "application/json")
    if item == "user_data":
        return _user_data(instance)
    return Answer(404, b"not found\n")


def answer(instance: Instance, path: str) -> Answer:
    """The response to ``path`` for ``instance`` (the routes in the module docstring)."""
    parts = path.split("?", 1)[0].split("/")[1:]
    if parts in ([], [""]):
        return _text([*EC2_VERSIONS, "openstack"])
    if parts[0] == "openstack":
        return _openstack(instance, parts[1:])
    if parts[0] in EC2_VERSIONS:
        return _ec2(instance, parts[1:])
    return Answer(404, b"not found\n")


class _Cache:
    """Who is at each address, remembered ``ttl`` seconds (``miss_ttl`` for nobody)."""

    def __init__(self, lookup: Lookup, ttl: float, miss_ttl: float) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._miss_ttl = miss_ttl
        self._entries: dict[str, tuple[float, Instance | None]] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> Instance | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(address)
            if entry is not None and entry[0] > now:
                return entry[1]
        instance = self._lookup(address)
        ttl = self._ttl if instance is not None else self._miss_ttl
        with self._lock:
            if len(self._entries) > 4096:  # addresses come and go: forget the expired
                self._entries = {a: e for a, e in self._entries.items() if e[0] > now}
            self._entries[address] = (now + ttl, instance)
        return instance


class MetadataService:
    """An HTTP server on ``address:port`` answering each guest about itself."""

    def __init__(
        self,
        host: str,
        lookup: Lookup,
        *,
        address: str = DEFAULT_ADDRESS,
        port: int = DEFAULT_PORT,
        cache_ttl: float = 5.0,
        miss_ttl: float = 1.0,
    ) -> None:
        self.host = host
        self._cache = _Cache(lookup, cache_ttl, miss_ttl)
        self._bind = (address, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port once started, if 0 was asked for)."""
        if self._server is None:
            return self._bind
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def start(self) -> None:
        """Bind and serve in a thread (OSError if the address cannot be bound)."""
        service = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a guest that opens a connection and says nothing is dropped
            server_version = "rpclib-metadata"

            def do_GET(self) -> None:
                service._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                LOG.debug("%s: " + format, self.client_address[0], *args)

        self._server = ThreadingHTTPServer(self._bind, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="compute-metadata", daemon=True
        )
        self._thread.start()
        LOG.info("metadata service of compute %s on %s:%d", self.host, *self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        source = str(request.client_address[0])
        try:
            instance = self._cache.get(source)
        except rpclib.MessagingError as exc:
            LOG.warning("metadata %s from %s: 503, conductor not answering: %s",
                        request.path, source, exc)  # fmt: skip
            self._send(request, Answer(503, b"metadata temporarily unavailable\n"))
            return
        except Exception:  # e.g. a conductor too old for get_instance_metadata
            LOG.exception("metadata %s from %s: 500", request.path, source)
            self._send(request, Answer(500, b"metadata service error\n"))
            return
        if instance is None:
            LOG.info("metadata %s from %s: 404, no instance of host %s has this address",
                     request.path, source, self.host)  # fmt: skip
            self._send(request, Answer(404, b"no instance at this address\n"))
            return
        result = answer(instance, request.path)
        LOG.info("metadata %s for instance %s (%s): %d",
                 request.path, instance.uuid, source, result.status)  # fmt: skip
        self._send(request, result)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, result: Answer) -> None:
        request.send_response(result.status)
        request.send_header("Content-Type", result.content_type)
        request.send_header("Content-Length", str(len(result.body)))
        request.end_headers()
        request.wfile.write(result.body)
