"""The etcd:// URL: endpoints, prefix, options, and a clear error for every mistake."""

from __future__ import annotations

import socket

import pytest

from rpclib.exceptions import InvalidTransportURL, TransportError
from rpclib.transports import load_driver
from rpclib.transports.etcd.options import Endpoint, EtcdOptions, parse_options
from rpclib.transports.url import parse_url


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
        ("etcd://user:pw@h/p", "does not take credentials"),
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
