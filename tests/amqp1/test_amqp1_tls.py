"""TLS for the AMQP 1.0 transport: ``amqps://`` and the ``ssl*`` options.

The URL checks are pure logic. The rest runs against the TLS listener of the
private amqp1 node (``amqp1_node``), which requires a client certificate; its
server certificate names ``localhost`` (and 127.0.0.1 as an IP entry, which
proton's name check does not read).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.exceptions import InvalidTransportURL, TransportError, Undeliverable
from rpclib.transports import load_driver
from rpclib.transports.amqp1 import Amqp1Driver
from rpclib.transports.amqp1.options import parse_options
from rpclib.transports.base import Address, Driver, Guarantee
from rpclib.transports.url import parse_url
from tests.support.amqp1 import node_tls_url
from tests.support.rabbit_node import Certs, RabbitNode, make_certs
from tests.transports.driver_contract import Collector, EventCollector

WAIT = 30.0
FAIL_FAST = 5.0
"""A refused handshake must fail within this, not wait for timeouts."""


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A second CA with its own server and client certificates: trusted by nobody here."""
    return make_certs(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture
def make_driver() -> Iterator[Callable[[str], Driver]]:
    drivers: list[Driver] = []

    def make(url: str) -> Driver:
        drivers.append(driver := load_driver(url))
        return driver

    yield make
    for driver in drivers:
        driver.close()


def topic() -> Address:
    return Address(f"x{uuid.uuid4().hex[:8]}", "work")


# --- URL and options (nothing connects) ------------------------------------------------------


def test_amqps_means_tls_on_port_5671_with_the_name_checked() -> None:
    opts = parse_options(parse_url("amqps://u:p@broker/v"))
    assert opts.tls is not None and opts.tls.verify
    assert (opts.hosts[0].address, opts.virtual_host) == ("broker:5671", "v")
    assert parse_options(parse_url("amqps://broker:5999")).hosts[0].port == 5999


def test_plain_schemes_have_no_tls_on_port_5672() -> None:
    for scheme in ("amqp1", "qpid"):
        opts = parse_options(parse_url(f"{scheme}://broker"))
        assert opts.tls is None and opts.hosts[0].port == 5672


def test_ssl_true_turns_tls_on_for_any_scheme_and_ssl_verify_false_skips_the_name() -> None:
    for scheme in ("amqp1", "qpid"):
        opts = parse_options(parse_url(f"{scheme}://broker/?ssl=true&ssl_verify=false"))
        assert opts.tls is not None and opts.hosts[0].port == 5671
        assert not opts.tls.verify and not opts.tls.context.check_hostname


def test_tls_files_are_loaded_and_kept_by_path(other_certs: Certs) -> None:
    opts = parse_options(
        parse_url(
            f"amqps://broker/?ssl_ca={other_certs.ca}&ssl_cert={other_certs.client_cert}"
            f"&ssl_key={other_certs.client_key}"
        )
    )
    assert opts.tls is not None
    assert (opts.tls.ca, opts.tls.cert, opts.tls.key) == (
        str(other_certs.ca),
        str(other_certs.client_cert),
        str(other_certs.client_key),
    )
    assert opts.tls.context.cert_store_stats()["x509_ca"] == 1


def bad_tls_queries(certs: Certs, garbage: Path) -> list[tuple[str, str, str]]:
    """(scheme, query, option named in the error) for every TLS mistake."""
    return [
        ("amqps", "ssl=false", "ssl=false contradicts the amqps:// scheme"),
        ("amqp1", f"ssl_ca={certs.ca}", "ssl_ca need TLS"),
        ("qpid", "ssl_verify=false", "ssl_verify need TLS"),
        ("amqp1", "ssl=maybe", "ssl='maybe'"),
        ("amqps", "ssl_verify=perhaps", "ssl_verify='perhaps'"),
        ("amqps", "ssl_ca=/nonexistent/ca.pem", "ssl_ca='/nonexistent/ca.pem'"),
        ("amqps", f"ssl_ca={garbage}", "ssl_ca="),
        ("amqps", "ssl_cert=/nonexistent/cert.pem", "ssl_cert"),
        ("amqps", f"ssl_key={certs.client_key}", "ssl_key needs ssl_cert"),
        ("amqps", f"ssl_cert={certs.client_cert}", "holds no private key"),
        ("amqps", f"ssl_cert={certs.client_cert}&ssl_key={certs.server_key}", "ssl_cert/ssl_key"),
        ("amqps", f"ssl_cert={certs.client_cert}&ssl_key={garbage}", "ssl_key="),
    ]


def test_tls_mistakes_are_invalid_urls_naming_the_option_before_connecting(
    other_certs: Certs, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for scheme, query, named in bad_tls_queries(other_certs, garbage):
        # port 1 on a host that does not exist: building must fail before any connect
        url = f"{scheme}://user:secret@no-such-host.invalid:1/?{query}"
        with pytest.raises(InvalidTransportURL) as excinfo:
            Amqp1Driver(parse_url(url))
        assert named in str(excinfo.value), (query, str(excinfo.value))
        assert "secret" not in str(excinfo.value)


# --- against the private node's TLS listener -------------------------------------------------


class Echo:
    def __init__(self) -> None:
        self.notes: EventCollector[Any] = EventCollector(WAIT)

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value

    def note(self, ctx: dict[str, Any], value: Any) -> None:
        self.notes.put(value)


def test_call_and_at_least_once_cast_over_amqps_with_a_client_certificate(
    amqp1_node: RabbitNode,
) -> None:
    name = f"tls{uuid.uuid4().hex[:8]}"
    endpoint = Echo()
    url = node_tls_url(amqp1_node)
    with rpclib.get_transport(url) as server_t, rpclib.get_transport(url) as client_t:
        server = rpclib.RPCServer(server_t, rpclib.Target(topic=name, server="s1"), [endpoint])
        server.start()
        try:
            client = rpclib.RPCClient(client_t, rpclib.Target(topic=name), timeout=WAIT)
            assert client.call({}, "echo", value={"over": "amqps"}) == {"over": "amqps"}
            client.prepare(at_least_once=True).cast({}, "note", value="stored")
            assert endpoint.notes.get() == "stored"
        finally:
            server.stop()
            server.wait()


def test_client_key_may_live_in_the_certificate_file(
    amqp1_node: RabbitNode, make_driver: Callable[[str], Driver], tmp_path: Path
) -> None:
    certs = amqp1_node.certs
    both = tmp_path / "client-with-key.pem"
    both.write_text(certs.client_cert.read_text() + certs.client_key.read_text())
    url = node_tls_url(amqp1_node).split("&ssl_cert=")[0] + f"&ssl_cert={both}"
    address = topic()
    got = Collector(WAIT)
    make_driver(url).listen(address, got)  # AMQP 1.0 and the topology connection
    make_driver(url).send(address, b"one file", guarantee=Guarantee.AT_LEAST_ONCE)
    assert got.get().body == b"one file"


def test_ssl_verify_refuses_a_name_the_certificate_does_not_carry(amqp1_node: RabbitNode) -> None:
    # the certificate has 127.0.0.1 only as an IP entry, which proton's name check ignores
    started = time.monotonic()
    with pytest.raises(TransportError) as excinfo:
        load_driver(node_tls_url(amqp1_node, host="127.0.0.1"))
    message = str(excinfo.value)
    assert f"TLS handshake with 127.0.0.1:{amqp1_node.tls_port} failed" in message
    assert "certificate verify failed" in message and "ssl_verify=false" in message
    assert time.monotonic() - started < FAIL_FAST


def test_ssl_verify_false_still_verifies_the_chain_but_not_the_name(
    amqp1_node: RabbitNode, make_driver: Callable[[str], Driver]
) -> None:
    url = node_tls_url(amqp1_node, "ssl_verify=false", host="127.0.0.1")
    address = topic()
    got = Collector(WAIT)
    make_driver(url).listen(address, got)
    make_driver(url).send(address, b"name not checked", guarantee=Guarantee.AT_LEAST_ONCE)
    assert got.get().body == b"name not checked"


def test_untrusted_ca_fails_clearly_at_construction(
    amqp1_node: RabbitNode, other_certs: Certs
) -> None:
    url = node_tls_url(amqp1_node, "ssl_verify=false").replace(
        str(amqp1_node.certs.ca), str(other_certs.ca)
    )
    started = time.monotonic()
    with pytest.raises(TransportError) as excinfo:
        load_driver(url)
    message = str(excinfo.value)
    assert f"TLS handshake with localhost:{amqp1_node.tls_port} failed" in message
    assert "certificate verify failed" in message and "ssl_ca" in message
    assert time.monotonic() - started < FAIL_FAST


def test_broker_refusing_the_client_certificate_fails_clearly(
    amqp1_node: RabbitNode, other_certs: Certs
) -> None:
    own = node_tls_url(amqp1_node)
    unknown = own.replace(str(amqp1_node.certs.client_cert), str(other_certs.client_cert))
    unknown = unknown.replace(str(amqp1_node.certs.client_key), str(other_certs.client_key))
    missing = own.split("&ssl_cert=")[0]
    for url, hint in ((unknown, "client certificate"), (missing, "give ssl_cert")):
        with pytest.raises(TransportError, match="TLS handshake with localhost:") as excinfo:
            load_driver(url)
        assert hint in str(excinfo.value), str(excinfo.value)


def test_amqps_to_a_plaintext_listener_fails_instead_of_falling_back(
    amqp1_node: RabbitNode,
) -> None:
    url = node_tls_url(amqp1_node).replace(f":{amqp1_node.tls_port}/", f":{amqp1_node.port}/")
    with pytest.raises(TransportError, match=f"TLS handshake with localhost:{amqp1_node.port}"):
        load_driver(url)


def test_every_connection_of_the_driver_uses_the_tls_listener(
    amqp1_node: RabbitNode, make_driver: Callable[[str], Driver]
) -> None:
    ports = {amqp1_node.port, amqp1_node.tls_port}
    before = client_sockets(ports)
    names_before = set(connection_lines(amqp1_node))
    driver = make_driver(node_tls_url(amqp1_node))
    address = topic()
    driver.declare(address)  # topology over AMQP 0-9-1
    driver.send(address, b"x", guarantee=Guarantee.AT_LEAST_ONCE)  # a message over AMQP 1.0
    new = client_sockets(ports) - before
    assert sorted(remote for _, remote in new) == [amqp1_node.tls_port] * 2, new
    # RabbitMQ 3.10 lists only the 0-9-1 (topology) connection; the broker says it is TLS
    topology = [line for line in connection_lines(amqp1_node) if line not in names_before]
    assert len(topology) == 1, topology
    assert topology[0].split("\t")[1:] == ["true", "{0,9,1}", "CN=rpclib-test-client"]


def test_reconnects_over_tls_after_the_broker_closes_connections(
    amqp1_node: RabbitNode, make_driver: Callable[[str], Driver]
) -> None:
    url = node_tls_url(amqp1_node, "retry_backoff_max=0.5")
    address = topic()
    got = Collector(2.0)
    make_driver(url).listen(address, got)
    sender = make_driver(url)
    sender.send(address, b"before", guarantee=Guarantee.AT_LEAST_ONCE)
    assert got.get().body == b"before"
    ports = {amqp1_node.port, amqp1_node.tls_port}
    before = client_sockets(ports)
    amqp1_node.close_all_connections()
    deadline = time.monotonic() + WAIT
    while True:
        try:
            sender.send(address, b"after", guarantee=Guarantee.AT_LEAST_ONCE)
            if got.get().body == b"after":
                break
        except (TransportError, Undeliverable, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    reconnected = client_sockets(ports) - before
    assert reconnected and {remote for _, remote in reconnected} == {amqp1_node.tls_port}
    assert all(line.split("\t")[1] == "true" for line in connection_lines(amqp1_node)), (
        connection_lines(amqp1_node)
    )


def client_sockets(ports: set[int]) -> set[tuple[int, int]]:
    """(local port, remote port) of established IPv4 TCP connections to 127.0.0.1:``ports``.

    Read from /proc/net/tcp: only this test process connects to the private
    node, and the node's own sockets have its ports on the local side.
    """
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        remote_ip, remote_port = remote.split(":")
        if state == "01" and remote_ip == "0100007F" and int(remote_port, 16) in ports:
            found.add((int(local.split(":")[1], 16), int(remote_port, 16)))
    return found


def connection_lines(node: RabbitNode) -> list[str]:
    """``name  ssl  protocol  peer_cert_subject`` of every connection the node lists."""
    out = node.rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "name", "ssl", "protocol",
        "peer_cert_subject",
    )  # fmt: skip
    return [line for line in out.splitlines() if line.strip()]
