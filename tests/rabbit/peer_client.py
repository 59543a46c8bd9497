"""A client process for the broker-restart tests: a stream of at-least-once casts.

Usage: ``peer_client.py URL TOPIC COUNT [pipelined]``. Casts ``record(seq=i)``
for i in 0..COUNT-1; each cast is retried on transport errors until the broker
confirmed it (``retry=None``), or, ``pipelined``, sent without waiting for its
confirm (the driver keeps it until confirmed, up to a send_timeout of 120 s
here) and flushed at the end. Prints
``sent <n>`` every 100 casts, then ``done``.
"""

from __future__ import annotations

import logging
import sys

import rpclib


def main() -> None:
    url, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pipelined = sys.argv[4:] == ["pipelined"]
    if pipelined:
        # The driver keeps unconfirmed pipelined casts for send_timeout; the broker's
        # restart on a busy machine can take longer than the 15 s default.
        url += ("&" if "?" in url else "?") + "send_timeout=120"
    logging.basicConfig(level=logging.WARNING, format="client %(levelname)s %(name)s: %(message)s")
    with rpclib.get_transport(url) as transport:
        client = rpclib.RPCClient(
            transport,
            rpclib.Target(topic=topic),
            at_least_once=True,
            retry=None,
            pipelined=pipelined,
        )
        for seq in range(count):
            client.cast({}, "record", seq=seq)
            if (seq + 1) % 100 == 0:
                print(f"sent {seq + 1}", flush=True)
        client.flush(timeout=120)
    print("done", flush=True)


if __name__ == "__main__":
    main()
