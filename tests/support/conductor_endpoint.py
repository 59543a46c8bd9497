"""A conductor-like endpoint for authorization tests: it records who ran what."""

from __future__ import annotations

import queue
from typing import Any

import rpclib


class RecordingConductor:
    """Records ``(method or tag, authenticated sender)`` of every call it runs.

    ``calls`` is the list so far; ``seen`` the same as a queue, for tests that
    wait for a cast. A refused call never gets here.
    """

    target = rpclib.Target(namespace="conductor", version="1.0")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.seen: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def _record(self, name: str) -> str | None:
        info = rpclib.current_request()
        assert info is not None
        self.calls.append((name, info.sender))
        self.seen.put((name, info.sender))
        return info.sender

    def heartbeat(self, ctx: dict[str, Any], tag: str = "") -> str | None:
        return self._record(tag or "heartbeat")

    def list_instances(self, ctx: dict[str, Any]) -> list[str]:
        self._record("list_instances")
        return ["every project's instances"]
