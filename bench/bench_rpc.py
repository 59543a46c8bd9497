"""RPC over memory://: call round trips and cast throughput, with a floor.

The floor is the same traffic without rpclib's layers: the memory driver
moving pre-encoded bytes between a sender and a handler that answers at once.
The ratio rpclib/floor shows what the envelope, versioning, dispatch and
executor cost on top of the bus.

Run: ``bench/run`` (or ``python bench/bench_rpc.py`` with rpclib importable).
``--base DIR`` instead compares this tree's rpclib with another checkout's
(each round in fresh processes, interleaved): a change's cost on the hot path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import rpclib
from rpclib.transports.base import Address, Guarantee, Incoming

PAYLOAD = {
    "instance_uuid": str(uuid.uuid4()),
    "name": "vm-0001",
    "vcpus": 2,
    "memory_mb": 2048,
    "flavor": "m1.small",
    "image": "cirros-0.6.2",
    "tags": ["a", "b"],
    "meta": {"k": "v"},
}


class Endpoint:
    def __init__(self) -> None:
        self.casts = 0
        self.done = threading.Event()
        self.expected = 0
        self._lock = threading.Lock()

    def echo(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def note(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        with self._lock:
            self.casts += 1
            if self.casts == self.expected:
                self.done.set()


def rpclib_calls(n: int) -> list[float]:
    transport = rpclib.get_transport(f"memory://bench-{uuid.uuid4().hex}")
    server = rpclib.RPCServer(transport, rpclib.Target(topic="b", server="s"), [Endpoint()])
    server.start()
    client = rpclib.RPCClient(transport, rpclib.Target(topic="b"), timeout=30)
    client.call({}, "echo", payload=PAYLOAD)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.call({"request_id": "req-1"}, "echo", payload=PAYLOAD)
        samples.append(time.perf_counter() - t0)
    server.stop()
    server.wait()
    transport.close()
    return samples


def rpclib_casts(n: int) -> float:
    transport = rpclib.get_transport(f"memory://bench-{uuid.uuid4().hex}")
    endpoint = Endpoint()
    endpoint.expected = n
    server = rpclib.RPCServer(transport, rpclib.Target(topic="b", server="s"), [endpoint])
    server.start()
    client = rpclib.RPCClient(transport, rpclib.Target(topic="b"), at_least_once=True)
    t0 = time.perf_counter()
    for _ in range(n):
        client.cast({"request_id": "req-1"}, "note", payload=PAYLOAD)
    endpoint.done.wait(120)
    elapsed = time.perf_counter() - t0
    server.stop()
    server.wait()
    transport.close()
    return elapsed


def floor_calls(n: int) -> list[float]:
    """Bytes over the same driver: request to a topic, reply to an inbox, no rpclib layers."""
    transport = rpclib.get_transport(f"memory://bench-{uuid.uuid4().hex}")
    driver = transport.driver
    got = threading.Event()
    inbox = driver.open_inbox(lambda body: got.set())

    def answer(msg: Incoming) -> None:
        msg.ack()
        driver.send_to_inbox(inbox.address, msg.body)

    sub = driver.listen(Address("x", "b"), answer)
    data = rpclib.Serializer().dumps(PAYLOAD)
    samples = []
    for _ in range(n):
        got.clear()
        t0 = time.perf_counter()
        driver.send(Address("x", "b"), data, guarantee=Guarantee.AT_MOST_ONCE)
        got.wait(30)
        samples.append(time.perf_counter() - t0)
    sub.close()
    transport.close()
    return samples


def floor_casts(n: int) -> float:
    transport = rpclib.get_transport(f"memory://bench-{uuid.uuid4().hex}")
    driver = transport.driver
    done = threading.Event()
    count = [0]
    serializer = rpclib.Serializer()

    def take(msg: Incoming) -> None:
        serializer.loads(msg.body)
        msg.ack()
        count[0] += 1
        if count[0] == n:
            done.set()

    sub = driver.listen(Address("x", "b"), take)
    t0 = time.perf_counter()
    for _ in range(n):
        driver.send(Address("x", "b"), serializer.dumps(PAYLOAD), guarantee=Guarantee.AT_LEAST_ONCE)
    done.wait(120)
    elapsed = time.perf_counter() - t0
    sub.close()
    transport.close()
    return elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round_json(calls: int, casts: int) -> None:
    """One round of the rpclib side only, as JSON (for ``--base``'s child processes)."""
    s = rpclib_calls(calls)
    print(
        json.dumps(
            {"calls": len(s) / sum(s), "p50": pct(s, 0.5), "casts": casts / rpclib_casts(casts)}
        )
    )


def compare_with_base(base: str, calls: int, casts: int, rounds: int) -> None:
    """rpclib of this tree against rpclib of ``base``, each in its own process, interleaved."""
    trees = {"this": str(Path(rpclib.__file__).resolve().parents[1]), "base": base}
    runs: dict[str, list[dict[str, float]]] = {"this": [], "base": []}
    for _ in range(rounds):
        for name, tree in trees.items():
            command = [sys.executable, __file__, "--round-json", "--calls", str(calls)]
            out = subprocess.run(
                [*command, "--casts", str(casts)],
                env={**os.environ, "PYTHONPATH": tree},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[name].append(json.loads(out.splitlines()[-1]))
    med = statistics.median
    print(f"memory:// RPC, this tree vs {base}, {rounds} interleaved rounds, medians")
    print(f"{'':28}{'this':>12}{'base':>12}{'ratio':>8}")
    for key, label, scale in (
        ("calls", "sequential calls /s", 1.0),
        ("p50", "call p50 (us)", 1e6),
        ("casts", "at-least-once casts /s", 1.0),
    ):
        t = med(r[key] for r in runs["this"]) * scale
        b = med(r[key] for r in runs["base"]) * scale
        print(f"{label:28}{t:12.1f}{b:12.1f}{t / b:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--casts", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--base", metavar="DIR", help="compare with the rpclib of another checkout (e.g. main)"
    )
    parser.add_argument("--round-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round_json:
        one_round_json(args.calls, args.casts)
        return
    if args.base:
        compare_with_base(args.base, args.calls, args.casts, args.rounds)
        return
    call_rates: dict[str, list[float]] = {"rpclib": [], "floor": []}
    p50: dict[str, list[float]] = {"rpclib": [], "floor": []}
    p99: dict[str, list[float]] = {"rpclib": [], "floor": []}
    cast_rates: dict[str, list[float]] = {"rpclib": [], "floor": []}
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        for name, fn in (("rpclib", rpclib_calls), ("floor", floor_calls)):
            s = fn(args.calls)
            call_rates[name].append(len(s) / sum(s))
            p50[name].append(pct(s, 0.5))
            p99[name].append(pct(s, 0.99))
        for name, cfn in (("rpclib", rpclib_casts), ("floor", floor_casts)):
            cast_rates[name].append(args.casts / cfn(args.casts))
    med = statistics.median
    print(f"memory:// RPC, {args.rounds} interleaved rounds, medians")
    print(f"{'':28}{'rpclib':>12}{'floor':>12}{'ratio':>8}")
    r, f = med(call_rates["rpclib"]), med(call_rates["floor"])
    print(f"{'sequential calls /s':28}{r:12.0f}{f:12.0f}{r / f:8.2f}")
    for label, d in (("call p50 (us)", p50), ("call p99 (us)", p99)):
        r, f = med(d["rpclib"]) * 1e6, med(d["floor"]) * 1e6
        print(f"{label:28}{r:12.1f}{f:12.1f}{r / f:8.2f}")
    r, f = med(cast_rates["rpclib"]), med(cast_rates["floor"])
    print(f"{'at-least-once casts /s':28}{r:12.0f}{f:12.0f}{r / f:8.2f}")


if __name__ == "__main__":
    main()
