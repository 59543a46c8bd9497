"""Dispatch: the version rule, method visibility and argument checks."""

from __future__ import annotations

from typing import Any

import pytest

import rpclib
from rpclib.dispatcher import Dispatcher


class V13:
    target = rpclib.Target(namespace="compute", version="1.3")

    def boot(self, ctx: dict[str, Any], name: str, vcpus: int = 1) -> str:
        return f"1.3:{name}:{vcpus}"

    def _secret(self, ctx: dict[str, Any]) -> str:
        return "no"


class V20:
    target = rpclib.Target(namespace="compute", version="2.0")

    def boot(self, ctx: dict[str, Any], name: str) -> str:
        return f"2.0:{name}"


class Untyped:
    def anything(self, ctx, **kwargs):  # type: ignore[no-untyped-def]
        return kwargs


def test_request_within_the_minor_range_dispatches() -> None:
    entry = Dispatcher([V13()]).lookup("compute", "1.1", "boot")
    assert entry.func({}, name="a") == "1.3:a:1"


def test_each_major_goes_to_its_own_endpoint() -> None:
    d = Dispatcher([V13(), V20()])
    assert d.lookup("compute", "2.0", "boot").func({}, name="a") == "2.0:a"
    assert d.lookup("compute", "1.0", "boot").func({}, name="a") == "1.3:a:1"


def test_newer_minor_is_unsupported_and_names_what_is_implemented() -> None:
    with pytest.raises(rpclib.UnsupportedVersion) as info:
        Dispatcher([V13(), V20()]).lookup("compute", "1.4", "boot")
    err = info.value
    assert (err.method, err.requested, err.implemented) == ("boot", "1.4", ("1.3", "2.0"))
    assert "1.4" in str(err) and "1.3, 2.0" in str(err)


def test_unknown_major_is_unsupported() -> None:
    with pytest.raises(rpclib.UnsupportedVersion):
        Dispatcher([V13()]).lookup("compute", "3.0", "boot")


def test_unknown_method_is_no_such_method() -> None:
    with pytest.raises(rpclib.NoSuchMethod, match="'reboot'"):
        Dispatcher([V13()]).lookup("compute", "1.0", "reboot")


def test_private_methods_are_never_callable() -> None:
    with pytest.raises(rpclib.NoSuchMethod):
        Dispatcher([V13()]).lookup("compute", "1.0", "_secret")


def test_wrong_namespace_finds_nothing() -> None:
    with pytest.raises(rpclib.NoSuchMethod, match="network"):
        Dispatcher([V13()]).lookup("network", "1.0", "boot")


def test_endpoint_without_target_is_default_namespace_version_1_0() -> None:
    d = Dispatcher([Untyped()])
    assert d.interfaces() == {None: ["1.0"]}
    assert d.lookup(None, "1.0", "anything").func({}, a=1) == {"a": 1}


def test_unexpected_argument_is_named() -> None:
    entry = Dispatcher([V13()]).lookup("compute", "1.0", "boot")
    with pytest.raises(rpclib.InvalidArguments, match="unexpected argument.*colour"):
        entry.check({"name": "a", "colour": "red"})


def test_missing_required_argument_is_named() -> None:
    entry = Dispatcher([V13()]).lookup("compute", "1.0", "boot")
    with pytest.raises(rpclib.InvalidArguments, match="missing required.*name"):
        entry.check({"vcpus": 2})


def test_annotated_types_are_checked() -> None:
    entry = Dispatcher([V13()]).lookup("compute", "1.0", "boot")
    with pytest.raises(rpclib.InvalidArguments, match="'vcpus' expects int, got str"):
        entry.check({"name": "a", "vcpus": "two"})
    with pytest.raises(rpclib.InvalidArguments, match="expects int, got bool"):
        entry.check({"name": "a", "vcpus": True})


def test_var_keyword_methods_accept_anything() -> None:
    Dispatcher([Untyped()]).lookup(None, "1.0", "anything").check({"x": object()})


def test_server_needs_at_least_one_endpoint() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Dispatcher([])
