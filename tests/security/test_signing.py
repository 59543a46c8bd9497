"""Signed messages: the signer is the sender; forged, untrusted, misdirected, replayed: refused."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.transports.base import Address, Guarantee, Incoming
from tests.rpc.helpers import wait_until

Login = Callable[..., rpclib.Transport]


@pytest.fixture
def signing() -> Any:
    import rpclib.signing  # the `signing` extra: a missing package fails here, loudly

    return rpclib.signing


@pytest.fixture
def trust_dir(tmp_path: Path) -> Path:
    path = tmp_path / "trust"
    path.mkdir()
    return path


@pytest.fixture
def keys(signing: Any, trust_dir: Path) -> dict[str, Any]:
    """A key per principal, each trusted (its public half in the trust directory)."""
    store = signing.TrustStore(directory=trust_dir)
    out = {}
    for principal in ("conductor", "compute-1", "scheduler"):
        out[principal] = signing.SigningKey.generate(principal)
        store.write(out[principal])
    return out


@pytest.fixture
def login(signing: Any, keys: dict[str, Any], trust_dir: Path, bus_url: str) -> Iterator[Login]:
    """A transport on a bus without accounts, signing as ``principal`` (or with ``key``)."""
    opened: list[rpclib.Transport] = []

    def make(principal: str, key: Any = None, reload_interval: float = 2.0) -> rpclib.Transport:
        trust = signing.TrustStore(directory=trust_dir, reload_interval=reload_interval)
        transport = rpclib.get_transport(
            bus_url, signing=signing.Signing(key or keys[principal], trust)
        )
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


class Svc:
    target = rpclib.Target(namespace="svc", version="1.2")

    def __init__(self) -> None:
        self.seen: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def whoami(self, ctx: dict[str, Any], tag: str = "") -> str | None:
        info = rpclib.current_request()
        assert info is not None
        self.seen.put((tag, info.sender))
        return info.sender


def serve(transport: rpclib.Transport, **kw: Any) -> tuple[Svc, rpclib.RPCServer]:
    endpoint = Svc()
    server = rpclib.RPCServer(transport, rpclib.Target(topic="svc", server="s1"), [endpoint], **kw)
    server.start()
    return endpoint, server


def client(transport: rpclib.Transport, **kw: Any) -> rpclib.RPCClient:
    kw.setdefault("timeout", 10)
    return rpclib.RPCClient(transport, rpclib.Target(topic="svc", namespace="svc"), **kw)


def inner(transport: rpclib.Transport) -> Any:
    """The driver under the signing layer: sends what it is given, unsealed."""
    return transport.driver.inner  # type: ignore[attr-defined]


def refused(transport: rpclib.Transport) -> int:
    return int(transport.driver.refused)  # type: ignore[attr-defined]


def capture(transport: rpclib.Transport) -> list[tuple[Address, bytes]]:
    """Record every sealed message ``transport`` sends, as a wire tap would."""
    driver = inner(transport)
    sent: list[tuple[Address, bytes]] = []
    original = driver.send

    def tap(address: Address, body: bytes, **kw: Any) -> None:
        sent.append((address, body))
        original(address, body, **kw)

    driver.send = tap
    return sent


def test_the_signer_is_the_sender_of_calls_and_replies(login: Login) -> None:
    _, server = serve(login("conductor"))
    try:
        assert client(login("compute-1")).call({}, "whoami") == "compute-1"
        assert client(login("scheduler"), version_cap="auto").call({}, "whoami") == "scheduler"
    finally:
        server.stop()
        server.wait()


def test_a_message_from_an_untrusted_key_is_dead_lettered_unhandled(
    signing: Any, login: Login
) -> None:
    endpoint, server = serve(login("conductor"))
    stranger = login("compute-1", key=signing.SigningKey.generate("compute-1"))
    try:
        client(stranger, at_least_once=True).cast({}, "whoami", tag="stranger")
        wait_until(lambda: refused(server.transport) == 1, what="the refusal")
        (dead,) = server.transport.driver.dead_letters()
        assert "unverified: signed by 'compute-1' with key" in dead.reason
        assert "which is not trusted" in dead.reason
        assert endpoint.seen.empty()
    finally:
        server.stop()
        server.wait()


def test_a_tampered_message_is_refused(login: Login) -> None:
    endpoint, server = serve(login("conductor"))
    sender = login("compute-1")
    sent = capture(sender)
    try:
        client(sender, at_least_once=True).cast({}, "whoami", tag="original")
        assert endpoint.seen.get(timeout=10) == ("original", "compute-1")
        address, sealed = sent[-1]
        forged = sealed.replace(b"original", b"0riginal")
        assert forged != sealed
        inner(sender).send(address, forged, guarantee=Guarantee.AT_LEAST_ONCE)
        wait_until(lambda: refused(server.transport) == 1, what="the refusal")
        assert "bad signature" in server.transport.driver.dead_letters()[0].reason
        assert endpoint.seen.empty()
    finally:
        server.stop()
        server.wait()


def test_a_captured_message_sent_again_is_refused(login: Login) -> None:
    endpoint, server = serve(login("conductor"))
    sender = login("compute-1")
    sent = capture(sender)
    try:
        client(sender, at_least_once=True).cast({}, "whoami", tag="once")
        assert endpoint.seen.get(timeout=10) == ("once", "compute-1")
        address, sealed = sent[-1]
        rogue = login("scheduler")
        inner(rogue).send(address, sealed, guarantee=Guarantee.AT_LEAST_ONCE)
        wait_until(lambda: refused(server.transport) == 1, what="the refusal")
        assert "replay of a message 'compute-1' sent before" in (
            server.transport.driver.dead_letters()[0].reason
        )
        assert endpoint.seen.empty()
    finally:
        server.stop()
        server.wait()


def test_a_message_sent_to_another_destination_is_refused(login: Login) -> None:
    got: queue.Queue[Incoming] = queue.Queue()
    receiver = login("conductor")
    sender = login("compute-1")
    sub = receiver.driver.listen(Address("rpclib", "elsewhere"), got.put)
    sent = capture(sender)
    try:
        sender.driver.declare(Address("rpclib", "here"))
        sender.driver.send(
            Address("rpclib", "here"), b"for here", guarantee=Guarantee.AT_LEAST_ONCE
        )
        _, sealed = sent[-1]
        sender.driver.inner.send(
            Address("rpclib", "elsewhere"), sealed, guarantee=Guarantee.AT_MOST_ONCE
        )  # type: ignore[attr-defined]
        wait_until(lambda: receiver.driver.refused == 1, what="the refusal")  # type: ignore[attr-defined]
        assert "signed it for 'rpclib/here'" in receiver.driver.dead_letters()[0].reason
        assert got.empty()
    finally:
        sub.close()


def test_a_call_past_its_deadline_is_refused_by_its_seal(
    signing: Any, keys: dict[str, Any]
) -> None:
    trust = signing.TrustStore({"compute-1": [keys["compute-1"].public_key]})
    now = [1000.0]
    seals = signing.Seals(signing.Signing(keys["compute-1"], trust), clock=lambda: now[0])
    sealed = seals.seal("rpclib/svc", b"call", expires_at=1005.0)
    assert seals.open("rpclib/svc", sealed).body == b"call"
    now[0] = 1006.0
    with pytest.raises(signing.UnverifiedMessage, match="expired"):
        seals.open("rpclib/svc", sealed)


def test_a_new_key_is_trusted_and_a_retired_one_refused_without_restarting_the_receiver(
    signing: Any, login: Login, trust_dir: Path, keys: dict[str, Any]
) -> None:
    _, server = serve(login("conductor", reload_interval=0.0))
    try:
        rotated = signing.SigningKey.generate("compute-1")
        signing.TrustStore(directory=trust_dir).write(rotated)
        assert client(login("compute-1", key=rotated)).call({}, "whoami") == "compute-1"
        for old in trust_dir.glob(f"compute-1.{keys['compute-1'].key_id}.pub"):
            old.unlink()
        with pytest.raises(rpclib.ReplyTimeout):
            client(login("compute-1"), timeout=1).call({}, "whoami")
        assert client(login("compute-1", key=rotated)).call({}, "whoami") == "compute-1"
    finally:
        server.stop()
        server.wait()


def test_a_policy_sees_the_signer(login: Login) -> None:
    policy = rpclib.Policy([rpclib.Allow("scheduler", namespace="svc", methods=["*"])])
    _, server = serve(login("conductor"), policy=policy)
    try:
        with pytest.raises(rpclib.Forbidden, match="'compute-1' may not call svc.whoami"):
            client(login("compute-1")).call({}, "whoami")
        assert client(login("scheduler")).call({}, "whoami") == "scheduler"
    finally:
        server.stop()
        server.wait()
