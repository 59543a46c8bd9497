"""The RabbitMQ management API client's requests and errors, against a small HTTP server on
127.0.0.1 that answers as the broker would (what the broker then enforces is tested on real
nodes: tests/security/test_rabbit_accounts.py, tests/amqp1/test_security.py)."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rpclib.exceptions import TransportError
from rpclib.transports.rabbitmq_management import (
    ManagementClient,
    Permissions,
    TopicPermission,
)


@dataclass
class Seen:
    method: str
    path: str
    auth: str
    body: Any


@dataclass
class Broker:
    """Answers: (method, path) -> (HTTP code, body bytes); anything else 204. Records all."""

    url: str
    answers: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def broker() -> Iterator[Broker]:
    state = Broker("")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.seen.append(
                Seen(self.command, self.path, self.headers.get("Authorization", ""), body)
            )
            code, text = state.answers.get((self.command, self.path), (204, b""))
            self.send_response(code)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        do_GET = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def client(broker: Broker) -> ManagementClient:
    return ManagementClient(broker.url, "admin", "s3cret", timeout=10)


def test_a_user_is_put_with_its_password_and_no_tags(broker: Broker) -> None:
    client(broker).put_user("compute-1", "pw")
    (seen,) = broker.seen
    assert (seen.method, seen.path) == ("PUT", "/api/users/compute-1")
    assert seen.body == {"password": "pw", "tags": ""}  # no impersonator, no administrator


def test_requests_log_in_as_the_admin(broker: Broker) -> None:
    client(broker).put_user("u", "pw")
    assert broker.seen[0].auth == "Basic " + base64.b64encode(b"admin:s3cret").decode()


def test_setting_permissions_replaces_the_topic_permissions(broker: Broker) -> None:
    perms = Permissions("u", "^c$", "^w$", "^r$", (TopicPermission("rpclib", "^k$", "^b$"),))
    broker.answers[("DELETE", "/api/topic-permissions/%2F/u")] = (404, b'{"error":"Not Found"}')
    client(broker).set_permissions("/", perms)
    assert [(s.method, s.path, s.body) for s in broker.seen] == [
        ("PUT", "/api/permissions/%2F/u", {"configure": "^c$", "write": "^w$", "read": "^r$"}),
        ("DELETE", "/api/topic-permissions/%2F/u", None),
        (
            "PUT",
            "/api/topic-permissions/%2F/u",
            {"exchange": "rpclib", "write": "^k$", "read": "^b$"},
        ),
    ]


def test_a_missing_vhost_is_created_with_the_admin_allowed_everything(broker: Broker) -> None:
    broker.answers[("GET", "/api/vhosts/prod")] = (404, b'{"error":"Object Not Found"}')
    client(broker).ensure_vhost("prod", "admin")
    assert [(s.method, s.path, s.body) for s in broker.seen] == [
        ("GET", "/api/vhosts/prod", None),
        ("PUT", "/api/vhosts/prod", {}),
        ("PUT", "/api/permissions/prod/admin", {"configure": ".*", "write": ".*", "read": ".*"}),
    ]


def test_an_existing_vhost_is_left_alone(broker: Broker) -> None:
    broker.answers[("GET", "/api/vhosts/prod")] = (200, b'{"name":"prod"}')
    client(broker).ensure_vhost("prod", "admin")
    assert [(s.method, s.path) for s in broker.seen] == [("GET", "/api/vhosts/prod")]


def test_a_refusal_names_method_path_code_and_the_brokers_reason(broker: Broker) -> None:
    reason = b'{"error":"bad_request","reason":"inequivalent arg \'type\'"}'
    broker.answers[("PUT", "/api/exchanges/v/rpclib")] = (400, reason)
    with pytest.raises(TransportError) as caught:
        client(broker).declare_exchange("v", "rpclib")
    message = str(caught.value)
    for part in ("PUT /api/exchanges/v/rpclib", "HTTP 400", "inequivalent arg 'type'"):
        assert part in message
    assert "s3cret" not in message


def test_version_reads_the_overview(broker: Broker) -> None:
    broker.answers[("GET", "/api/overview")] = (200, b'{"rabbitmq_version":"4.1.0"}')
    assert client(broker).version() == "4.1.0"


def test_an_overview_without_a_version_is_refused_by_name(broker: Broker) -> None:
    broker.answers[("GET", "/api/overview")] = (200, b'{"management_version":"x"}')
    with pytest.raises(TransportError, match="names no rabbitmq_version"):
        client(broker).version()


def test_an_answer_that_is_not_json_is_refused_by_name(broker: Broker) -> None:
    broker.answers[("GET", "/api/overview")] = (200, b"<html>a proxy</html>")
    with pytest.raises(TransportError, match="GET /api/overview with no JSON"):
        client(broker).version()


def test_an_unreachable_api_names_its_address() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(TransportError, match=f"at {url} \\(PUT /api/users/u\\)"):
        ManagementClient(url, "admin", "pw", timeout=10).put_user("u", "pw")
