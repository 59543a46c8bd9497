"""Small building blocks for RPC tests."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import rpclib

WAIT = 10.0


class Recorder:
    """An endpoint mixin collecting what handlers saw, with waiting helpers."""

    def __init__(self) -> None:
        self.seen: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    def record(self, event: str, /, **kwargs: Any) -> None:
        self.seen.put((event, kwargs))

    def next(self, timeout: float = WAIT) -> tuple[str, dict[str, Any]]:
        return self.seen.get(timeout=timeout)

    def assert_nothing(self, within: float = 0.3) -> None:
        try:
            item = self.seen.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected handler call {item!r}")


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def serve(
    transport: rpclib.Transport,
    endpoints: list[object],
    *,
    topic: str = "svc",
    server: str = "host1",
    **kwargs: Any,
) -> rpclib.RPCServer:
    s = rpclib.RPCServer(transport, rpclib.Target(topic=topic, server=server), endpoints, **kwargs)
    s.start()
    return s


def stop(*servers: rpclib.RPCServer) -> None:
    for s in servers:
        s.stop()
    for s in servers:
        s.wait(timeout=WAIT)


class Gate:
    """A handler-side barrier the test opens."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise AssertionError("gate never opened")
