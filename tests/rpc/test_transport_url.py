"""Transport URLs and driver lookup: bad input is named clearly."""

from __future__ import annotations

import pytest

import rpclib
from rpclib.transports import available_schemes
from rpclib.transports.url import parse_url


def test_parses_failover_hosts_credentials_vhost_and_options() -> None:
    url = parse_url("rabbit://u:p%40ss@h1:5672,u2:x@h2:5673/vhost?ssl=1&heartbeat=10")
    assert url.scheme == "rabbit"
    assert [(h.hostname, h.port, h.username, h.password) for h in url.hosts] == [
        ("h1", 5672, "u", "p@ss"),
        ("h2", 5673, "u2", "x"),
    ]
    assert url.virtual_host == "vhost"
    assert url.options == {"ssl": "1", "heartbeat": "10"}


def test_passwords_never_appear_in_str() -> None:
    url = parse_url("rabbit://user:secret@host/")
    assert "secret" not in str(url)
    assert "user:***@host" in str(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "non-empty"),
        ("localhost:5672", "missing scheme"),
        ("rabbit://host:notaport/", "bad host"),
        ("rabbit://h1,,h2/", "empty host"),
        ("rabbit://:5672/", "missing host name"),
        ("rabbit://h/?a=1&a=2", "given twice"),
    ],
)
def test_bad_urls_raise_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(rpclib.InvalidTransportURL, match=problem):
        parse_url(url)


def test_unknown_scheme_names_it_and_the_known_ones() -> None:
    with pytest.raises(rpclib.UnknownTransport, match="'nosuch'") as info:
        rpclib.get_transport("nosuch://host/")
    assert "memory" in str(info.value)


def test_memory_driver_is_registered() -> None:
    assert "memory" in available_schemes()


def test_numeric_option_errors_name_the_option() -> None:
    url = parse_url("memory://x?prefetch=lots")
    with pytest.raises(rpclib.InvalidTransportURL, match="prefetch"):
        url.int_option("prefetch", 1)


def test_unknown_options_are_rejected_by_name() -> None:
    url = parse_url("memory://x?seed=1&sede=2")
    with pytest.raises(rpclib.InvalidTransportURL, match="sede"):
        url.reject_unknown_options({"seed"})


def test_options_after_a_host_without_a_path_keep_slashes_in_values() -> None:
    url = parse_url("rabbits://h1:5671?ssl_ca=/etc/ca.pem&ssl_cert=/etc/c.pem")
    assert url.options == {"ssl_ca": "/etc/ca.pem", "ssl_cert": "/etc/c.pem"}
    assert url.virtual_host == ""
    assert [(h.hostname, h.port) for h in url.hosts] == [("h1", 5671)]


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "soon"])
def test_a_duration_option_must_be_a_positive_finite_number_of_seconds(text: str) -> None:
    url = parse_url(f"memory://x?wait={text}")
    with pytest.raises(rpclib.InvalidTransportURL, match="wait="):
        url.seconds_option("wait", 1.0)


def test_a_duration_option_may_be_zero_when_asked_non_negative() -> None:
    url = parse_url("memory://x?wait=0")
    assert url.seconds_option("wait", 1.0, positive=False) == 0.0
    assert parse_url("memory://x").seconds_option("wait", 2.5) == 2.5
