"""The RabbitMQ management HTTP API calls that provisioning needs, for ``rabbit://`` and
``amqp1://`` alike (both ``access`` modules derive :class:`Permissions`; this sets them).

Kept to what least-privilege accounts need: the broker's version, a vhost, users with
no tags (never ``impersonator``: it may forge ``user-id``; nor ``administrator``),
vhost and topic permissions (topic ones replaced, so applying twice is applying once),
and the shared exchanges and queues the admin declares. Every failure is a
:class:`~rpclib.exceptions.TransportError` naming the method, path, HTTP code and what
the broker said.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from rpclib.exceptions import TransportError

DETAIL_LIMIT = 300
"""Characters of the broker's answer kept in an error."""


class TopicPermission(NamedTuple):
    """Routing keys ``user`` may publish (write) and bind (read) on one topic exchange."""

    exchange: str
    write: str
    read: str


@dataclass(frozen=True)
class Permissions:
    """One RabbitMQ user's permissions on a vhost: configure/write/read name regexes, and
    a topic permission per topic exchange (an exchange with none lets any key through)."""

    user: str
    configure: str
    write: str
    read: str
    topics: tuple[TopicPermission, ...]


class ManagementClient:
    """A RabbitMQ management API at ``base_url`` (``http[s]://HOST:PORT``), as ``user``."""

    def __init__(self, base_url: str, user: str, password: str, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """``method`` on ``/api`` + ``path``; the answer's JSON, or None when it has no body
        (or, with ``missing_ok``, when the broker answers 404)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + "/api" + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as exc:
            if missing_ok and exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace").strip()[:DETAIL_LIMIT]
            raise TransportError(
                f"RabbitMQ management API at {self.base_url} refused {method} /api{path}: "
                f"HTTP {exc.code} {detail or exc.reason}"
            ) from None
        except urllib.error.URLError as exc:
            raise TransportError(
                f"RabbitMQ management API at {self.base_url} ({method} /api{path}): {exc.reason}"
            ) from None
        except OSError as exc:
            raise TransportError(
                f"RabbitMQ management API at {self.base_url} ({method} /api{path}): {exc}"
            ) from None
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            snippet = text[:DETAIL_LIMIT].decode(errors="replace")
            raise TransportError(
                f"RabbitMQ management API at {self.base_url} answered {method} /api{path} "
                f"with no JSON: {snippet!r}"
            ) from None

    def version(self) -> str:
        """The broker's version, e.g. ``3.13.7``; TransportError if it names none."""
        overview = self.request("GET", "/overview")
        version = overview.get("rabbitmq_version") if isinstance(overview, dict) else None
        if not isinstance(version, str) or not version:
            raise TransportError(
                f"RabbitMQ management API at {self.base_url}: GET /api/overview names no "
                f"rabbitmq_version ({str(overview)[:DETAIL_LIMIT]!r})"
            )
        return version

    def ensure_vhost(self, vhost: str, admin_user: str) -> None:
        """Create ``vhost`` if missing, letting ``admin_user`` declare the shared nodes in it."""
        if self.request("GET", f"/vhosts/{_q(vhost)}", missing_ok=True) is None:
            self.request("PUT", f"/vhosts/{_q(vhost)}", {})
            everything = {"configure": ".*", "write": ".*", "read": ".*"}
            self.request("PUT", f"/permissions/{_q(vhost)}/{_q(admin_user)}", everything)

    def put_user(self, user: str, password: str) -> None:
        """Create ``user`` or change its password; no tags, so it is no administrator and
        no impersonator (which could forge ``user-id``)."""
        self.request("PUT", f"/users/{_q(user)}", {"password": password, "tags": ""})

    def set_permissions(self, vhost: str, perms: Permissions) -> None:
        """Set ``perms.user``'s permissions on ``vhost``, replacing its topic permissions."""
        user = f"{_q(vhost)}/{_q(perms.user)}"
        body = {"configure": perms.configure, "write": perms.write, "read": perms.read}
        self.request("PUT", f"/permissions/{user}", body)
        self.request("DELETE", f"/topic-permissions/{user}", missing_ok=True)
        for topic in perms.topics:
            body = {"exchange": topic.exchange, "write": topic.write, "read": topic.read}
            self.request("PUT", f"/topic-permissions/{user}", body)

    def user_vhosts(self, user: str) -> set[str] | None:
        """The vhosts ``user`` has permissions on; None if there is no such user."""
        if self.request("GET", f"/users/{_q(user)}", missing_ok=True) is None:
            return None
        held = self.request("GET", f"/users/{_q(user)}/permissions") or []
        return {str(p["vhost"]) for p in held if isinstance(p, dict) and "vhost" in p}

    def clear_permissions(self, vhost: str, user: str) -> None:
        """Take ``user``'s permissions on ``vhost`` away (none there is fine)."""
        self.request("DELETE", f"/permissions/{_q(vhost)}/{_q(user)}", missing_ok=True)

    def delete_user(self, user: str) -> None:
        """Delete ``user`` (already gone is fine)."""
        self.request("DELETE", f"/users/{_q(user)}", missing_ok=True)

    def declare_exchange(self, vhost: str, name: str, kind: str = "topic") -> None:
        """Declare a durable exchange of type ``kind`` (no-op if it exists alike)."""
        body = {"type": kind, "durable": True, "auto_delete": False, "arguments": {}}
        self.request("PUT", f"/exchanges/{_q(vhost)}/{_q(name)}", body)

    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any]) -> None:
        """Declare a durable queue with ``arguments`` (no-op if it exists alike)."""
        body = {"durable": True, "auto_delete": False, "arguments": arguments}
        self.request("PUT", f"/queues/{_q(vhost)}/{_q(name)}", body)

    def bind_queue(self, vhost: str, exchange: str, queue: str, routing_key: str) -> None:
        """Bind ``queue`` to ``exchange`` with ``routing_key`` (no-op if bound alike)."""
        body = {"routing_key": routing_key, "arguments": {}}
        self.request("POST", f"/bindings/{_q(vhost)}/e/{_q(exchange)}/q/{_q(queue)}", body)

    def bind_exchange(self, vhost: str, source: str, destination: str, routing_key: str) -> None:
        """Bind exchange ``destination`` to ``source`` with ``routing_key`` (no-op if alike)."""
        body = {"routing_key": routing_key, "arguments": {}}
        path = f"/bindings/{_q(vhost)}/e/{_q(source)}/e/{_q(destination)}"
        self.request("POST", path, body)


def _q(part: str) -> str:
    """One path segment: ``/`` (the default vhost) and all else percent-encoded."""
    return quote(part, safe="")


__all__ = ["ManagementClient", "Permissions", "TopicPermission"]
