"""A call and at-least-once casts between two transports: the TLS and auth tests' workload."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import rpclib

WAIT = 20.0


class Recorder:
    """An RPC endpoint: ``echo`` answers, ``note`` records (at-least-once casts)."""

    def __init__(self) -> None:
        self.notes: list[int] = []
        self._lock = threading.Lock()

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value

    def note(self, ctx: dict[str, Any], n: int) -> None:
        with self._lock:
            self.notes.append(n)

    def wait_for(self, count: int) -> list[int]:
        deadline = time.monotonic() + WAIT
        while len(self.notes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.notes)} of {count} casts arrived")
            time.sleep(0.02)
        return sorted(self.notes)


def call_and_cast(server_url: str, client_url: str, casts: int = 5) -> None:
    """A server on ``server_url``; a call and ``casts`` at-least-once casts from ``client_url``."""
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    recorder = Recorder()
    with (
        rpclib.get_transport(server_url) as server_side,
        rpclib.get_transport(client_url) as client_side,
    ):
        server = rpclib.RPCServer(server_side, rpclib.Target(topic=topic, server="s1"), [recorder])
        server.start()
        try:
            client = rpclib.RPCClient(client_side, rpclib.Target(topic=topic), timeout=WAIT)
            assert client.call({}, "echo", value={"over": "etcd"}) == {"over": "etcd"}
            at_least_once = client.prepare(at_least_once=True)
            for n in range(casts):
                at_least_once.cast({}, "note", n=n)
            assert recorder.wait_for(casts) == list(range(casts))
        finally:
            server.stop()
            server.wait()
