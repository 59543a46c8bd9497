"""The lean HTTP session the driver gives etcd3gw: real requests, requests' errors."""

from __future__ import annotations

import socket

import pytest
import requests

from rpclib.transports.etcd.lean_http import LeanSession
from tests.support.etcd import EtcdServer


def test_posts_json_and_keeps_the_connection(etcd_server: EtcdServer) -> None:
    session = LeanSession()
    url = f"http://{etcd_server.endpoint}/v3/kv/range"
    first = session.post(url, json={"key": "AA=="}, timeout=(5, 5))
    second = session.post(url, json={"key": "AA=="}, timeout=(5, 5))
    assert (first.status_code, second.status_code) == (200, 200)
    assert "header" in first.json()
    assert len(session._all) == 1  # one kept-alive connection for this thread
    session.close()


def test_an_error_status_is_returned_with_its_text(etcd_server: EtcdServer) -> None:
    session = LeanSession()
    response = session.post(f"http://{etcd_server.endpoint}/v3/kv/range", data="{", timeout=5)
    assert response.status_code >= 400 and response.text
    session.close()


def test_a_dead_endpoint_raises_requests_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(requests.exceptions.ConnectionError):
        LeanSession().post(f"http://127.0.0.1:{port}/v3/kv/range", json={}, timeout=1)


def test_a_silent_endpoint_raises_requests_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        port = server.getsockname()[1]
        with pytest.raises(requests.exceptions.Timeout):
            LeanSession().post(f"http://127.0.0.1:{port}/v3/kv/range", json={}, timeout=0.3)
