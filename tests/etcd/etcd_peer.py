"""Peer processes for the etcd tests.

Usage:

- ``etcd_peer.py serve URL TOPIC RECORD_FILE``: an RPC server (server name
  ``peer``) whose ``record(seq)`` appends ``<seq> <message_id> <attempts>``
  to RECORD_FILE before the cast is acked. Prints ``ready``; runs until its
  stdin closes.
- ``etcd_peer.py cast URL TOPIC COUNT [RETRY]``: at-least-once casts
  ``record(seq=i)`` for i in 0..COUNT-1, retrying transport errors
  (``retry=None``; ``RETRY`` ``default`` keeps rpclib's default, so a failed
  send ends the process); prints ``sent <n>`` every 100 casts, then ``done``.
- ``etcd_peer.py hold URL EXCHANGE TOPIC``: listens at driver level and never
  settles what it gets, printing ``got <body> <attempts>`` (a server that
  hangs or is killed while handling). Runs until killed or stdin closes.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import rpclib
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Incoming


class Recorder:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a")  # noqa: SIM115  (open for the process's life)
        self._lock = threading.Lock()

    def record(self, ctx: dict[str, Any], seq: int) -> None:
        request = rpclib.current_request()
        assert request is not None
        with self._lock:
            self._file.write(f"{seq} {request.message_id} {request.attempts}\n")
            self._file.flush()


def serve(url: str, topic: str, path: str) -> None:
    with rpclib.get_transport(url) as transport:
        server = rpclib.RPCServer(
            transport, rpclib.Target(topic=topic, server="peer"), [Recorder(path)]
        )
        server.start()
        print("ready", flush=True)
        sys.stdin.read()
        server.stop()
        server.wait()


def cast(url: str, topic: str, count: int, retry: str = "none") -> None:
    with rpclib.get_transport(url) as transport:
        client = rpclib.RPCClient(transport, rpclib.Target(topic=topic), at_least_once=True)
        if retry == "none":
            client = client.prepare(retry=None)
        for seq in range(count):
            client.cast({}, "record", seq=seq)
            if (seq + 1) % 100 == 0:
                print(f"sent {seq + 1}", flush=True)
    print("done", flush=True)


def hold(url: str, exchange: str, topic: str) -> None:
    driver = load_driver(url)
    held: list[Incoming] = []

    def handler(incoming: Incoming) -> None:
        held.append(incoming)
        print(f"got {incoming.body.decode()} {incoming.attempts}", flush=True)

    driver.listen(Address(exchange, topic), handler)
    print("ready", flush=True)
    sys.stdin.read()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="peer %(levelname)s %(name)s: %(message)s")
    command, url, *args = sys.argv[1:]
    if command == "serve":
        serve(url, args[0], args[1])
    elif command == "cast":
        cast(url, args[0], int(args[1]), *args[2:3])
    elif command == "hold":
        hold(url, args[0], args[1])
    else:
        sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
