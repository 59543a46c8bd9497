"""The serving process of the cluster failover test: an RPC server and a billing listener.

Usage: ``failover_peer.py URL TOPIC NOTIFY_TOPIC CASTS_FILE NOTES_FILE``.
Serves ``record(seq)`` (appends ``<seq> <message_id> <attempts> <time>`` to
CASTS_FILE before the cast is acked) and ``echo`` on TOPIC (server ``peer``),
and listens to NOTIFY_TOPIC in pool ``billing`` (appends ``<n> <message_id>
<time>`` to NOTES_FILE). Prints ``ready`` once serving; runs until its stdin
closes, so it never outlives the test that started it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

import rpclib


class Recorder:
    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a")  # noqa: SIM115  (open for the process's life)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class Peer:
    def __init__(self, casts: Recorder) -> None:
        self._casts = casts

    def record(self, ctx: dict[str, Any], seq: int) -> None:
        request = rpclib.current_request()
        assert request is not None
        self._casts.write(f"{seq} {request.message_id} {request.attempts} {time.time():.6f}")

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return value


class Billing:
    def __init__(self, notes: Recorder) -> None:
        self._notes = notes

    def info(
        self,
        ctx: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        self._notes.write(f"{payload['n']} {metadata['message_id']} {time.time():.6f}")


def main() -> None:
    url, topic, notify_topic, casts_path, notes_path = sys.argv[1:6]
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rpclib.transports.rabbit").setLevel(logging.INFO)  # reconnects, restores
    with rpclib.get_transport(url) as transport:
        server = rpclib.RPCServer(
            transport, rpclib.Target(topic=topic, server="peer"), [Peer(Recorder(casts_path))]
        )
        listener = rpclib.NotificationListener(
            transport,
            [rpclib.Target(topic=notify_topic)],
            [Billing(Recorder(notes_path))],
            pool="billing",
        )
        server.start()
        listener.start()
        print("ready", flush=True)
        sys.stdin.read()
        listener.stop()
        server.stop()
        listener.wait()
        server.wait()


if __name__ == "__main__":
    main()
