"""version_cap: fixed caps refuse locally; "auto" follows the live servers."""

from __future__ import annotations

from typing import Any

import pytest

import rpclib
from rpclib.directory import encode_advert
from rpclib.transports.base import Address
from tests.rpc.helpers import WAIT, Recorder, serve, stop, wait_until

BOOT = rpclib.Method("boot", since="1.0", args={"flavor": "1.3"})


class ComputeV12(Recorder):
    target = rpclib.Target(version="1.2")

    def boot(self, ctx: dict[str, Any], name: str) -> str:
        self.record("boot", name=name)
        return "1.2"


class ComputeV13(Recorder):
    target = rpclib.Target(version="1.3")

    def boot(self, ctx: dict[str, Any], name: str, flavor: str | None = None) -> str:
        self.record("boot", name=name, flavor=flavor)
        return "1.3"


def auto_client(transport: rpclib.Transport, **target: Any) -> rpclib.RPCClient:
    return rpclib.RPCClient(
        transport, rpclib.Target(topic="svc", **target), version_cap="auto", timeout=WAIT
    )


def test_fixed_cap_refuses_before_sending(transport: rpclib.Transport) -> None:
    endpoint = ComputeV13()
    server = serve(transport, [endpoint])
    client = rpclib.RPCClient(transport, rpclib.Target(topic="svc"), version_cap="1.1")
    try:
        with pytest.raises(rpclib.VersionCapError, match="1.2.*above the version cap 1.1"):
            client.prepare(version="1.2").cast({}, "boot", name="x")
        endpoint.assert_nothing()
        assert transport.driver.dead_letters() == []
        assert client.can_send_version("1.1") and not client.can_send_version("1.2")
    finally:
        stop(server)


def test_can_send_version_never_raises_on_nonsense() -> None:
    client = rpclib.RPCClient(
        rpclib.get_transport("memory://cap-nonsense"), rpclib.Target(topic="svc"), version_cap="1.0"
    )
    assert client.can_send_version("banana") is False


def test_auto_cap_is_the_lowest_live_server_version(transport: rpclib.Transport) -> None:
    servers = [
        serve(transport, [ComputeV12()], server="a"),
        serve(transport, [ComputeV13()], server="b"),
    ]
    try:
        client = auto_client(transport)
        assert client.version_cap == "1.2"
        assert client.prepare(server="b").version_cap == "1.3"
        assert client.prepare(server="a").version_cap == "1.2"
    finally:
        stop(*servers)


def test_rolling_upgrade_is_followed_without_restarting_the_client(
    transport: rpclib.Transport,
) -> None:
    old_a, old_b = ComputeV12(), ComputeV12()
    a = serve(transport, [old_a], server="a", advert_interval=0.1)
    b = serve(transport, [old_b], server="b", advert_interval=0.1)
    client = auto_client(transport)

    assert client.version_cap == "1.2"
    assert client.call({}, BOOT, name="vm1", flavor="m1") == "1.2"
    assert not client.can_send_version("1.3")
    with pytest.raises(rpclib.VersionCapError):
        client.prepare(version="1.3").call({}, "boot", name="vm", flavor="m1")

    stop(a)
    new_a = ComputeV13()
    a = serve(transport, [new_a], server="a", advert_interval=0.1)
    assert client.version_cap == "1.2"  # b is still old
    for _ in range(6):  # whichever server takes it, it understands it
        assert client.call({}, BOOT, name="vm2", flavor="m1") in ("1.2", "1.3")

    stop(b)
    new_b = ComputeV13()
    b = serve(transport, [new_b], server="b", advert_interval=0.1)
    assert client.version_cap == "1.3"
    assert client.can_send_version("1.3")
    assert client.call({}, BOOT, name="vm3", flavor="m1") == "1.3"
    stop(a, b)


def test_downgraded_call_drops_arguments_the_old_server_lacks(transport: rpclib.Transport) -> None:
    old = ComputeV12()
    server = serve(transport, [old])
    try:
        auto_client(transport).cast({}, BOOT, name="vm", flavor="m1")
        assert old.next() == ("boot", {"name": "vm"})
    finally:
        stop(server)


def test_upgraded_server_receives_the_new_argument(transport: rpclib.Transport) -> None:
    new = ComputeV13()
    server = serve(transport, [new])
    try:
        auto_client(transport).cast({}, BOOT, name="vm", flavor="m1")
        assert new.next() == ("boot", {"name": "vm", "flavor": "m1"})
    finally:
        stop(server)


def test_method_newer_than_every_live_server_is_refused(transport: rpclib.Transport) -> None:
    server = serve(transport, [ComputeV12()])
    try:
        resize = rpclib.Method("resize", since="1.3")
        with pytest.raises(rpclib.VersionCapError, match="resize.*1.3.*cap 1.2"):
            auto_client(transport).cast({}, resize)
    finally:
        stop(server)


def test_a_dead_servers_advert_expires_after_its_ttl(transport: rpclib.Transport) -> None:
    server = serve(transport, [ComputeV13()], server="a")
    stale = encode_advert("ghost", {None: ["1.0"]}, {}, ttl=0.3)
    transport.driver.advertise(Address("rpclib", "svc", server="ghost"), stale, 0.3)
    try:
        client = auto_client(transport)
        assert client.version_cap == "1.0"  # the ghost holds everyone back...
        wait_until(lambda: client.version_cap == "1.3", what="the ghost's advert to expire")
    finally:
        stop(server)


def test_last_seen_cap_is_kept_while_no_server_is_live(transport: rpclib.Transport) -> None:
    server = serve(transport, [ComputeV12()])
    client = auto_client(transport)
    assert client.version_cap == "1.2"
    stop(server)
    wait_until(lambda: not transport.directory.view("rpclib", "svc").live(), what="server gone")
    assert client.version_cap == "1.2"
    assert not client.can_send_version("1.3")


def test_no_advert_ever_seen_means_uncapped(transport: rpclib.Transport) -> None:
    client = auto_client(transport)
    assert client.version_cap is None
    assert client.can_send_version("7.9")


def test_live_server_without_the_major_blocks_sending(transport: rpclib.Transport) -> None:
    class V2:
        target = rpclib.Target(version="2.0")

        def boot(self, ctx: dict[str, Any], name: str) -> None:
            pass

    server = serve(transport, [V2()])
    try:
        with pytest.raises(rpclib.VersionCapError, match="none with major 1"):
            auto_client(transport).cast({}, "boot", name="x")
    finally:
        stop(server)


def test_server_rejects_a_version_it_cannot_honour(transport: rpclib.Transport) -> None:
    server = serve(transport, [ComputeV12()])
    try:
        client = rpclib.RPCClient(
            transport, rpclib.Target(topic="svc", version="1.3"), timeout=WAIT
        )
        with pytest.raises(rpclib.UnsupportedVersion) as info:
            client.call({}, "boot", name="x")
        assert (info.value.method, info.value.requested, info.value.implemented) == (
            "boot",
            "1.3",
            ("1.2",),
        )
    finally:
        stop(server)


def test_rejected_cast_is_dead_lettered_logged_and_reported(
    transport: rpclib.Transport, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = ComputeV12()
    server = serve(transport, [endpoint])
    failures: list[rpclib.CastFailure] = []
    client = rpclib.RPCClient(
        transport, rpclib.Target(topic="svc", version="1.3"), on_cast_error=failures.append
    )
    try:
        client.cast({}, "boot", name="x")
        wait_until(lambda: bool(failures), what="the cast failure report")
        assert isinstance(failures[0].error, rpclib.UnsupportedVersion)
        assert failures[0].method == "boot"
        (letter,) = transport.driver.dead_letters()
        assert "UnsupportedVersion" in letter.reason and "1.3" in letter.reason
        assert "rejected cast" in caplog.text
        endpoint.assert_nothing()
    finally:
        stop(server)
