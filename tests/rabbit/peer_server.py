"""An RPC server process for the broker-restart tests.

Usage: ``peer_server.py URL TOPIC RECORD_FILE``. Serves ``record`` (appends
``<seq> <message_id> <attempts>`` to RECORD_FILE before the cast is acked),
``echo`` and ``slow``. Prints ``ready`` once serving and runs until its stdin
closes, so it never outlives the test that started it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import rpclib


class Peer:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a")  # noqa: SIM115  (open for the process's life)
        self._lock = threading.Lock()

    def record(self, ctx: dict[str, Any], seq: int) -> None:
        request = rpclib.current_request()
        assert request is not None
        with self._lock:
            self._file.write(f"{seq} {request.message_id} {request.attempts}\n")
            self._file.flush()

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value

    def slow(self, ctx: dict[str, Any], seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def main() -> None:
    url, topic, path = sys.argv[1:4]
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    with rpclib.get_transport(url) as transport:
        target = rpclib.Target(topic=topic, server="peer")
        server = rpclib.RPCServer(transport, target, [Peer(path)])
        server.start()
        print("ready", flush=True)
        sys.stdin.read()
        server.stop()
        server.wait()


if __name__ == "__main__":
    main()
