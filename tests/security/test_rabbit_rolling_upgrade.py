"""A rolling upgrade to rpclib.queues: the previous release and this one on one vhost.

The accounts are applied with ``?old_peers=true`` (docs/transports/rabbit.md,
"Rolling upgrade"); this release's drivers log in with it, the previous
release's with the URL they always had. The previous release is the real one:
its ``rpclib`` package is taken from git (:data:`OLD_RELEASE`) and runs in
subprocesses (tests/security/upgrade_peer.py), so its replies and adverts go
through the default exchange exactly as it sends them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.access import Access, Account
from rpclib.transports.base import Address
from rpclib.transports.rabbit import access as rabbit_access
from tests.rpc.helpers import wait_until

OLD_RELEASE = "7027c8290b4cc9c2137d1748d50cef7383a78c0a"
"""The last commit whose replies, requeues, dead letters and adverts used the default
exchange and adverts keyed by topic alone."""
VHOST = "rpclib-upgrade"
WAIT = 30.0
REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("upgrade_peer.py")


def _serving(name: str, topic: str, *servers: str) -> Access:
    access = Access(name)
    for server in servers:
        access = access.serve(rpclib.Target(topic=topic, server=server))
    return access


ACCESS = [
    _serving("conductor", "conductor", "conductor-old", "conductor-new").call(
        rpclib.Target(topic="compute")
    ),
    _serving("compute-1", "compute", "compute-1").call(rpclib.Target(topic="conductor")),
    _serving("compute-2", "compute", "compute-2").call(rpclib.Target(topic="conductor")),
]
ACCOUNTS = [Account(a, f"{a.principal}-{uuid.uuid4().hex[:8]}") for a in ACCESS]
PASSWORDS = {a.access.principal: a.password for a in ACCOUNTS}


@pytest.fixture(scope="module")
def old_rpclib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``rpclib`` package, from git (a directory for PYTHONPATH)."""
    root = tmp_path_factory.mktemp("old-release")
    archive = root / "rpclib.tar"
    done = subprocess.run(
        ["git", "-C", str(REPO), "archive", "-o", str(archive), OLD_RELEASE, "rpclib"],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"the previous release comes from git: run from a clone holding {OLD_RELEASE} "
            f"({done.stderr.strip()})"
        )
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    assert (root / "rpclib" / "transports" / "rabbit" / "driver.py").exists()
    return root


@pytest.fixture(scope="module")
def broker(rabbit_security_node: Any) -> dict[str, Any]:
    node = rabbit_security_node
    base = f"rabbit://guest:guest@127.0.0.1:{node.port}/{VHOST}"
    management = f"management=http://127.0.0.1:{node.management_port}"
    rabbit_access.apply(f"{base}?{management}&old_peers=true", ACCOUNTS)
    return {"port": node.port}


def new_url(broker: dict[str, Any], principal: str) -> str:
    return old_url(broker, principal) + "?old_peers=true"


def old_url(broker: dict[str, Any], principal: str) -> str:
    return f"rabbit://{principal}:{PASSWORDS[principal]}@127.0.0.1:{broker['port']}/{VHOST}"


class Peer:
    """A running upgrade_peer.py; its stdout lines are collected as they come."""

    def __init__(self, pythonpath: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(pythonpath),
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.strip())
                self._cond.notify_all()

    def expect(self, line: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: line in self.lines, WAIT):
                self.proc.kill()
                _, err = self.proc.communicate()
                raise AssertionError(f"peer never printed {line!r}; got {self.lines}; {err}")

    def replies(self, count: int) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: len(self._replies()) >= count, WAIT)
        found = self._replies()
        if len(found) < count:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"{count - len(found)} call(s) got no reply; {self.lines}; {err}")
        return [json.loads(x.removeprefix("reply ")) for x in found]

    def _replies(self) -> list[str]:
        return [x for x in self.lines if x.startswith("reply ")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(pythonpath: Path, *args: str) -> Peer:
        peer = Peer(pythonpath, *args)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def transports() -> Iterator[Callable[[str], rpclib.Transport]]:
    opened: list[rpclib.Transport] = []

    def open_(url: str) -> rpclib.Transport:
        transport = rpclib.get_transport(url)
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


class Echo:
    def __init__(self, server: str) -> None:
        self.server = server

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return {"value": value, "served_by": self.server}


def _serve(transport: rpclib.Transport, topic: str, server: str) -> rpclib.RPCServer:
    rpc = rpclib.RPCServer(transport, rpclib.Target(topic=topic, server=server), [Echo(server)])
    rpc.start()
    return rpc


# --- calls ---------------------------------------------------------------------------


def test_an_old_client_gets_the_reply_of_a_new_server(
    broker: dict[str, Any], old_rpclib: Path, peers: Any, transports: Any
) -> None:
    server = _serve(transports(new_url(broker, "conductor")), "conductor", "conductor-new")
    try:
        old = peers(
            old_rpclib, "call", old_url(broker, "compute-1"), "conductor", "conductor-new", "x"
        )
        assert old.replies(1) == [{"value": "x", "served_by": "conductor-new"}]
    finally:
        server.stop()
        server.wait()


def test_a_new_client_gets_the_reply_of_an_old_server(
    broker: dict[str, Any], old_rpclib: Path, peers: Any, transports: Any
) -> None:
    old = peers(old_rpclib, "serve", old_url(broker, "conductor"), "conductor", "conductor-old")
    old.expect("ready")
    client = rpclib.RPCClient(
        transports(new_url(broker, "compute-1")),
        rpclib.Target(topic="conductor", server="conductor-old"),
        timeout=WAIT,
    )
    assert client.call({}, "echo", value="y") == {"value": "y", "served_by": "conductor-old"}


def test_old_and_new_servers_of_a_topic_answer_old_and_new_clients(
    broker: dict[str, Any], old_rpclib: Path, peers: Any, transports: Any
) -> None:
    """Both consume the topic's shared queues; every call is answered, whoever takes it."""
    old = peers(old_rpclib, "serve", old_url(broker, "conductor"), "conductor", "conductor-old")
    old.expect("ready")
    server = _serve(transports(new_url(broker, "conductor")), "conductor", "conductor-new")
    try:
        client = rpclib.RPCClient(
            transports(new_url(broker, "compute-2")),
            rpclib.Target(topic="conductor"),
            timeout=WAIT,
        )
        served_new = {client.call({}, "echo", value=i)["served_by"] for i in range(8)}
        old_client = peers(
            old_rpclib, "call", old_url(broker, "compute-1"), "conductor", "-", *"abcdefgh"
        )
        replies = old_client.replies(8)
        assert [r["value"] for r in replies] == list("abcdefgh")
        served_old = {r["served_by"] for r in replies}
        assert served_new == served_old == {"conductor-old", "conductor-new"}
    finally:
        server.stop()
        server.wait()


# --- adverts ------------------------------------------------------------------------------


class Adverts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, server: str, body: bytes | None) -> None:
        self.seen.append((server, body is not None))


def test_old_and_new_adverts_reach_old_and_new_watchers(
    broker: dict[str, Any], old_rpclib: Path, peers: Any, transports: Any
) -> None:
    old_advert = peers(
        old_rpclib, "advertise", old_url(broker, "compute-1"), "compute", "compute-1"
    )
    old_advert.expect("ready")
    new_driver = transports(new_url(broker, "compute-2")).driver
    new_driver.advertise(Address("rpclib", "compute", server="compute-2"), b"here", 60.0)

    new_watch = Adverts()
    transports(new_url(broker, "conductor")).driver.watch_adverts("rpclib", "compute", new_watch)
    old_watch = peers(old_rpclib, "watch", old_url(broker, "conductor"), "compute")
    for who in ("compute-1", "compute-2"):
        wait_until(lambda w=who: (w, True) in new_watch.seen, WAIT, f"{who}'s advert, new watcher")
        old_watch.expect(f"advert {who}")

    old_advert.stop()
    old_advert.expect("withdrawn")
    new_driver.withdraw(Address("rpclib", "compute", server="compute-2"))
    for who in ("compute-1", "compute-2"):
        wait_until(
            lambda w=who: (w, False) in new_watch.seen, WAIT, f"{who}'s withdrawal, new watcher"
        )
        old_watch.expect(f"withdrawn {who}")
