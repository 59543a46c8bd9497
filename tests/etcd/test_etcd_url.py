"""The etcd:// and etcds:// URL: endpoints, prefix, credentials, TLS and other options,
and a clear error for every mistake (raised while parsing, before anything connects)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from rpclib.exceptions import InvalidTransportURL, TransportError
from rpclib.transports import load_driver
from rpclib.transports.etcd.options import Credentials, Endpoint, EtcdOptions, parse_options
from rpclib.transports.url import parse_url
from tests.support.etcd import EtcdCerts


def options(url: str) -> EtcdOptions:
    return parse_options(parse_url(url))


def test_defaults_are_local_etcd_under_rpclib() -> None:
    parsed = options("etcd://")
    assert parsed.endpoints == (Endpoint("127.0.0.1", 2379),)
    assert parsed.prefix == "/rpclib/"
    assert parsed.lease_ttl == 10


def test_several_hosts_and_a_nested_prefix() -> None:
    parsed = options("etcd://a:2379,b:12379,c/apps/cloud?lease_ttl=5&watch_idle=0.5")
    assert parsed.endpoints == (Endpoint("a", 2379), Endpoint("b", 12379), Endpoint("c", 2379))
    assert parsed.prefix == "/apps/cloud/"
    assert (parsed.lease_ttl, parsed.watch_idle) == (5, 0.5)


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("etcd://h/p?lease_tll=5", "unknown option(s) lease_tll"),
        ("etcd://h/p?lease_ttl=five", "lease_ttl='five' is not an integer"),
        ("etcd://h/p?lease_ttl=1", "lease_ttl=1 must be >= 2"),
        ("etcd://h/p?send_timeout=0", "send_timeout=0 must be a positive"),
        ("etcd://h/p?watch_timeout=inf", "watch_timeout=inf must be a positive"),
        ("etcd://h/p?retry_backoff=2&retry_backoff_max=1", "retry_backoff_max=1 is below"),
        ("etcd://user@h/p", "user 'user' has no password"),
        ("etcd://:pw@h/p", "a password without a user name"),
        ("etcd://a:pw@h1,b:pw@h2/p", "hosts give different credentials"),
        ("etcds://h/p?ssl=false", "ssl=false contradicts the etcds:// scheme"),
        ("etcds://h/p?ssl=maybe", "ssl='maybe' is not a boolean"),
        ("etcd://h/p?ssl_ca=/ca.pem", "option(s) ssl_ca need TLS"),
        ("etcd://h/p?ssl=false&ssl_verify=false", "option(s) ssl_verify need TLS"),
        ("etcds://h/p?ssl_key=/k.pem", "option ssl_key needs ssl_cert"),
        ("etcds://h/p?ssl_ca=/nonexistent/ca.pem", "option ssl_ca='/nonexistent/ca.pem': cannot"),
        ("etcds://h/p?ssl_cert=/nonexistent/c.pem", "option ssl_cert='/nonexistent/c.pem'"),
        ("etcd://h/a//b", "empty or unprintable segment"),
        ("etcd://h:99999/p", "bad host"),
    ],
)
def test_bad_url_names_the_problem(url: str, names: str) -> None:
    with pytest.raises(InvalidTransportURL) as excinfo:
        load_driver(url)
    assert names in str(excinfo.value)
    assert "pw" not in str(excinfo.value)


def test_unreachable_etcd_fails_at_once_naming_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"etcd://127.0.0.1:{port}/p?send_timeout=0.5&connect_timeout=0.5"
    with pytest.raises(TransportError) as excinfo:
        load_driver(url)
    assert f"127.0.0.1:{port}" in str(excinfo.value)


def test_plain_by_default_without_credentials() -> None:
    parsed = options("etcd://h/p")
    assert (parsed.tls, parsed.credentials, parsed.protocol) == (None, None, "http")


def test_etcds_is_tls_with_verification_on(etcd_certs: EtcdCerts) -> None:
    parsed = options(f"etcds://h/p?ssl_ca={etcd_certs.ca}")
    assert parsed.tls is not None and parsed.protocol == "https"
    assert parsed.tls.verify_mode == ssl.CERT_REQUIRED and parsed.tls.check_hostname
    assert parsed.endpoints == (Endpoint("h", 2379),)  # etcd's port is the same with TLS


def test_ssl_true_makes_etcd_tls_too() -> None:
    assert options("etcd://h/p?ssl=true").tls is not None
    assert options("etcds://h/p?ssl=true").tls is not None


def test_ssl_verify_false_skips_only_the_hostname_check(etcd_certs: EtcdCerts) -> None:
    tls = options(f"etcds://h/p?ssl_ca={etcd_certs.ca}&ssl_verify=false").tls
    assert tls is not None and not tls.check_hostname
    assert tls.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


def test_a_client_certificate_and_key_are_loaded(etcd_certs: EtcdCerts) -> None:
    url = (
        f"etcds://h/p?ssl_ca={etcd_certs.ca}&ssl_cert={etcd_certs.client_cert}"
        f"&ssl_key={etcd_certs.client_key}"
    )
    assert options(url).tls is not None


def test_a_certificate_file_holding_its_key_needs_no_ssl_key(
    etcd_certs: EtcdCerts, tmp_path: Path
) -> None:
    both = tmp_path / "both.pem"
    both.write_text(etcd_certs.client_cert.read_text() + etcd_certs.client_key.read_text())
    assert options(f"etcds://h/p?ssl_cert={both}").tls is not None


def test_credentials_apply_to_the_cluster_and_never_show() -> None:
    parsed = options("etcd://rpc:s%40cr%3At@a:2379,b:2379/p")
    assert parsed.credentials == Credentials("rpc", "s@cr:t")
    assert "s@cr:t" not in repr(parsed) and "s@cr:t" not in repr(parsed.credentials)
    same = options("etcd://rpc:pw@a:2379,rpc:pw@b:2379/p")
    assert same.credentials == Credentials("rpc", "pw")


def bad_pem(url: str) -> str:
    """The message of the InvalidTransportURL ``url`` raises, at construction."""
    with pytest.raises(InvalidTransportURL) as excinfo:
        load_driver(url)
    return str(excinfo.value)


def test_each_unusable_pem_file_is_named_by_its_option(
    etcd_certs: EtcdCerts, tmp_path: Path
) -> None:
    ca, cert, key = etcd_certs.ca, etcd_certs.client_cert, etcd_certs.client_key
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    assert "option ssl_ca=" in bad_pem(f"etcds://h/p?ssl_ca={key}")  # a key, not a CA
    assert "option ssl_ca=" in bad_pem(f"etcds://h/p?ssl_ca={tmp_path}")  # a directory
    assert "option ssl_cert=" in bad_pem(f"etcds://h/p?ssl_cert={junk}&ssl_key={key}")
    assert "option ssl_key=" in bad_pem(f"etcds://h/p?ssl_cert={cert}&ssl_key={junk}")
    assert "option ssl_key=" in bad_pem(f"etcds://h/p?ssl_cert={cert}&ssl_key={ca}")
    no_key = bad_pem(f"etcds://h/p?ssl_cert={cert}")
    assert "ssl_cert" in no_key and "no private key" in no_key
    mismatch = bad_pem(
        f"etcds://h/p?ssl_cert={cert}&ssl_key={etcd_certs.server_key}"
    )  # someone else's key
    assert "ssl_cert/ssl_key" in mismatch


def test_an_encrypted_key_is_refused_instead_of_prompting(
    etcd_certs: EtcdCerts, tmp_path: Path
) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(etcd_certs.client_key), "-aes256",
         "-passout", "pass:secret", "-out", str(encrypted)],
        check=True, capture_output=True,
    )  # fmt: skip
    text = bad_pem(f"etcds://h/p?ssl_cert={etcd_certs.client_cert}&ssl_key={encrypted}")
    assert "option ssl_key=" in text and "encrypted" in text
