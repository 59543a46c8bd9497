"""etcds://: HTTPS to a real etcd that requires client certificates, and clear TLS failures.

The session's ``etcd_tls_server`` serves HTTPS only with ``--client-cert-auth``;
its certificate names ``localhost`` (not 127.0.0.1).
"""

from __future__ import annotations

import queue
import time
import uuid

import pytest

from rpclib.exceptions import TransportError
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee, Incoming
from rpclib.transports.etcd import EtcdDriver
from rpclib.transports.etcd.client import TLSRefused
from tests.etcd.secure_workload import call_and_cast
from tests.support.etcd import EtcdCerts, EtcdServer

FAST = 5.0
"""A TLS refusal must be reported at once, not after retrying until send_timeout (15 s)."""


def refused(url: str) -> str:
    """The error building a driver on ``url`` raises, checked to come quickly."""
    started = time.monotonic()
    with pytest.raises(TransportError) as excinfo:
        load_driver(url)
    assert time.monotonic() - started < FAST, "a TLS refusal was retried"
    return str(excinfo.value)


def test_call_and_at_least_once_cast_over_etcds_with_a_client_certificate(
    etcd_tls_server: EtcdServer,
) -> None:
    prefix = f"tls{uuid.uuid4().hex[:8]}"
    url = etcd_tls_server.url(prefix)
    assert url.startswith("etcds://localhost:") and "ssl_cert=" in url
    call_and_cast(url, url)


def test_watches_and_requests_share_the_tls_settings(etcd_tls_server: EtcdServer) -> None:
    """A consumer's queue watch over HTTPS sees a stored message; the driver's view is TLS."""
    url = etcd_tls_server.url()
    consumer, sender = load_driver(url), load_driver(url)
    got: queue.Queue[Incoming] = queue.Queue()
    try:
        assert isinstance(consumer, EtcdDriver) and consumer.options.tls is not None
        address = Address("ex", "tls-queue")
        consumer.listen(address, got.put)
        sender.send(address, b"sealed", guarantee=Guarantee.AT_LEAST_ONCE)
        incoming = got.get(timeout=20)
        assert incoming.body == b"sealed"
        incoming.ack()
    finally:
        consumer.close()
        sender.close()


def test_an_untrusted_ca_fails_clearly_at_construction(
    etcd_tls_server: EtcdServer, stranger_certs: EtcdCerts
) -> None:
    text = refused(etcd_tls_server.url(ssl_ca=str(stranger_certs.ca)))
    assert "certificate was not accepted" in text and "ssl_ca" in text, text
    assert "localhost" in text


def test_a_client_certificate_from_an_unknown_ca_is_refused_clearly(
    etcd_tls_server: EtcdServer, stranger_certs: EtcdCerts
) -> None:
    url = etcd_tls_server.url(
        ssl_cert=str(stranger_certs.client_cert), ssl_key=str(stranger_certs.client_key)
    )
    text = refused(url)
    assert "certificate" in text and "ssl_cert" in text, text


def test_without_a_client_certificate_the_server_refuses(etcd_tls_server: EtcdServer) -> None:
    text = refused(etcd_tls_server.url(client_cert=False))
    assert "certificate" in text, text


def test_the_hostname_is_checked_unless_ssl_verify_is_false(
    etcd_tls_server: EtcdServer, stranger_certs: EtcdCerts
) -> None:
    def by_ip(**options: str) -> str:
        return etcd_tls_server.url(query=options).replace("//localhost:", "//127.0.0.1:")

    with pytest.raises(TLSRefused, match="mismatch"):
        load_driver(by_ip())
    driver = load_driver(by_ip(ssl_verify="false"))  # the chain is still verified ...
    driver.close()
    with pytest.raises(TLSRefused, match="not accepted"):  # ... so a wrong CA still fails
        load_driver(by_ip(ssl_verify="false", ssl_ca=str(stranger_certs.ca)))


def test_plain_etcd_url_on_the_tls_port_fails_clearly(etcd_tls_server: EtcdServer) -> None:
    text = refused(f"etcd://localhost:{etcd_tls_server.port}/p?send_timeout=1")
    assert f"localhost:{etcd_tls_server.port}" in text and "use etcds://" in text, text


def test_etcds_to_a_plain_etcd_fails_clearly(
    etcd_server: EtcdServer, etcd_certs: EtcdCerts
) -> None:
    # a closed handshake is retried (a restarting etcd does that too), with the likely cause
    text = refused(f"etcds://{etcd_server.endpoint}/p?ssl_ca={etcd_certs.ca}&send_timeout=1")
    assert "does the endpoint serve TLS?" in text, text
