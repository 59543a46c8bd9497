"""A process of either release for the rolling-upgrade tests (run with the old or new rpclib).

Usage: ``upgrade_peer.py COMMAND URL ARGS...``; it imports nothing but ``rpclib``,
so the test chooses the release with PYTHONPATH:

- ``serve URL TOPIC SERVER``: an RPCServer answering ``echo``; prints ``ready``,
  serves until stdin closes.
- ``call URL TOPIC SERVER|- VALUE...``: a call of ``echo`` per value, one after
  the other; prints ``reply <json>`` for each.
- ``advertise URL TOPIC SERVER``: a driver-level advert; prints ``ready``, and
  withdraws it when stdin closes (prints ``withdrawn``).
- ``watch URL TOPIC``: prints ``advert <server>`` / ``withdrawn <server>`` for
  every change it hears (``ready`` once watching) until stdin closes.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import rpclib
from rpclib.transports.base import Address


class Echo:
    def __init__(self, server: str) -> None:
        self.server = server

    def echo(self, ctx: dict[str, Any], value: Any) -> Any:
        return {"value": value, "served_by": self.server}


def main() -> None:
    command, url, topic = sys.argv[1:4]
    rest = sys.argv[4:]
    logging.basicConfig(level=logging.WARNING, format="peer %(levelname)s %(name)s: %(message)s")
    with rpclib.get_transport(url) as transport:
        if command == "serve":
            (server_name,) = rest
            server = rpclib.RPCServer(
                transport, rpclib.Target(topic=topic, server=server_name), [Echo(server_name)]
            )
            server.start()
            print("ready", flush=True)
            sys.stdin.read()
            server.stop()
            server.wait()
        elif command == "call":
            server_name, *values = rest
            target = rpclib.Target(topic=topic, server=None if server_name == "-" else server_name)
            client = rpclib.RPCClient(transport, target, timeout=20)
            for value in values:
                print("reply " + json.dumps(client.call({}, "echo", value=value)), flush=True)
        elif command == "advertise":
            (server_name,) = rest
            address = Address("rpclib", topic, server=server_name)
            transport.driver.advertise(address, b"here", 60.0)
            print("ready", flush=True)
            sys.stdin.read()
            transport.driver.withdraw(address)
            print("withdrawn", flush=True)
        elif command == "watch":

            def report(server: str, body: bytes | None) -> None:
                print(f"{'advert' if body is not None else 'withdrawn'} {server}", flush=True)

            watch = transport.driver.watch_adverts("rpclib", topic, report)
            print("ready", flush=True)
            sys.stdin.read()
            watch.cancel()
        else:
            raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
