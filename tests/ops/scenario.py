"""What the operator tests run: two versions of one service, and a cast only the newer takes."""

from __future__ import annotations

import io
import threading
from typing import Any

import rpclib
from rpclib.ops_cli import main

NAMESPACE = "notes"
TOPIC = "notes"


class NotesV10:
    """The older server: interface 1.0, ``note`` only."""

    target = rpclib.Target(namespace=NAMESPACE, version="1.0")

    def __init__(self) -> None:
        self.noted: list[str] = []
        self.event = threading.Event()

    def note(self, ctx: dict[str, Any], text: str) -> None:
        self.noted.append(text)
        self.event.set()


class NotesV12(NotesV10):
    """The newer server: interface 1.2 (its ``note`` takes casts at 1.2)."""

    target = rpclib.Target(namespace=NAMESPACE, version="1.2")


def serve(transport: rpclib.Transport, server: str, endpoint: object) -> rpclib.RPCServer:
    s = rpclib.RPCServer(
        transport, rpclib.Target(topic=TOPIC, server=server), [endpoint], advert_interval=0.5
    )
    s.start()
    return s


def stop(server: rpclib.RPCServer) -> None:
    server.stop()
    server.wait(timeout=30)


def cast_too_new(transport: rpclib.Transport, text: str) -> None:
    """An at-least-once cast at 1.2: a 1.0 server dead-letters it (UnsupportedVersion)."""
    client = rpclib.RPCClient(
        transport,
        rpclib.Target(topic=TOPIC, namespace=NAMESPACE, version="1.2"),
        at_least_once=True,
    )
    client.cast({}, "note", text=text)


def run(*argv: str) -> tuple[int, str]:
    """Run ``rpclib ARGV`` in this process (memory:// buses live here); exit code, stdout."""
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()
