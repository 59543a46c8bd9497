"""The lean HTTP session the driver gives etcd3gw: real requests, requests' errors."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests

from rpclib.transports.etcd.lean_http import LeanSession, TLSFailure
from tests.support.etcd import EtcdCerts, EtcdServer


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


def tls_session(certs: EtcdCerts, ca: Path | None = None) -> LeanSession:
    context = ssl.create_default_context(cafile=str(ca or certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return LeanSession(context)


def test_https_with_a_client_certificate_keeps_the_connection(
    etcd_tls_server: EtcdServer, etcd_certs: EtcdCerts
) -> None:
    session = tls_session(etcd_certs)
    url = f"https://{etcd_tls_server.endpoint}/v3/kv/range"
    for _ in range(3):
        assert session.post(url, json={"key": "AA=="}, timeout=(5, 5)).status_code == 200
    assert len(session._all) == 1
    session.close()


def test_an_untrusted_server_certificate_raises_tls_failure(
    etcd_tls_server: EtcdServer, etcd_certs: EtcdCerts, stranger_certs: EtcdCerts
) -> None:
    session = tls_session(etcd_certs, ca=stranger_certs.ca)
    with pytest.raises(TLSFailure, match="not accepted"):
        session.post(f"https://{etcd_tls_server.endpoint}/v3/kv/range", json={}, timeout=5)


def test_https_needs_a_tls_context(etcd_tls_server: EtcdServer) -> None:
    with pytest.raises(requests.exceptions.InvalidURL):
        LeanSession().post(f"https://{etcd_tls_server.endpoint}/v3/kv/range", json={}, timeout=5)


def test_a_tls_stream_is_read_as_it_comes_and_aborted_from_another_thread(
    etcd_tls_server: EtcdServer, etcd_certs: EtcdCerts
) -> None:
    session = tls_session(etcd_certs)
    stream = session.stream(
        f"https://{etcd_tls_server.endpoint}/v3/watch",
        json={"create_request": {"key": "AA==", "range_end": "AA=="}},
        connect_timeout=5,
    )
    assert stream.status_code == 200
    chunks = stream.chunks()
    assert b'"created":true' in next(chunks)  # the watch is open; nothing more will come
    threading.Timer(0.2, stream.abort).start()
    started = time.monotonic()
    with contextlib.suppress(requests.exceptions.ConnectionError):
        for _ in chunks:
            pass
    assert time.monotonic() - started < 5  # the blocked reader woke up
    stream.close()
    session.close()
