"""A server or listener in its own process, for tests about processes.

Run as ``python -m tests.support.worker --url URL --role rpc --topic T --server S
--version 1.2 --out events.jsonl``. It prints ``READY`` once serving, records
what it handles as JSON lines in ``--out``, and stops gracefully when its
standard input closes (the test's way of stopping it) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

import rpclib


class Journal:
    """Appends one JSON line per handled message (flushed, so the test can read it)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, **event: Any) -> None:
        with self._lock:
            self._file.write(json.dumps(event) + "\n")


def rpc_endpoint(server: str, interface_version: str, journal: Journal) -> object:
    class Endpoint:
        target = rpclib.Target(version=interface_version)

        def whoami(self, ctx: dict[str, Any]) -> str:
            return server

        def version(self, ctx: dict[str, Any]) -> str:
            return interface_version

        def record(self, ctx: dict[str, Any], n: int) -> None:
            info = rpclib.current_request()
            journal.write(server=server, n=n, id=info.message_id if info else None)

    return Endpoint()


def listener_endpoint(name: str, journal: Journal) -> object:
    class Endpoint:
        def info(
            self,
            ctx: dict[str, Any],
            publisher_id: str,
            event_type: str,
            payload: Any,
            metadata: dict[str, Any],
        ) -> None:
            journal.write(
                listener=name, event_type=event_type, payload=payload, id=metadata["message_id"]
            )

    return Endpoint()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--role", choices=["rpc", "listener"], default="rpc")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--server", default="worker")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--pool")
    parser.add_argument("--out", required=True)
    parser.add_argument("--advert-interval", type=float, default=0.5)
    args = parser.parse_args()

    journal = Journal(args.out)
    transport = rpclib.get_transport(args.url)
    consumer: rpclib.RPCServer | rpclib.NotificationListener
    if args.role == "rpc":
        consumer = rpclib.RPCServer(
            transport,
            rpclib.Target(topic=args.topic, server=args.server),
            [rpc_endpoint(args.server, args.version, journal)],
            advert_interval=args.advert_interval,
        )
    else:
        consumer = rpclib.NotificationListener(
            transport,
            [rpclib.Target(topic=args.topic)],
            [listener_endpoint(args.server, journal)],
            pool=args.pool,
        )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    consumer.start()
    print("READY", flush=True)
    done.wait()
    consumer.stop()
    consumer.wait(timeout=30)
    transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
