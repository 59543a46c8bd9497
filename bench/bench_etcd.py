"""RPC over etcd: rpclib vs the plain etcd client (etcd3gw), same etcd, same run.

The plain client is the floor: a call is a put that a watching server answers
with a put the client's watch sees (two writes, two watch events); casts are
a burst of puts consumed by a watcher. rpclib does the same through its
public API over ``etcd://``: at-most-once calls to a topic, and casts both
at-most-once (pushed into the server's box) and at-least-once (stored,
claimed by transaction, acked: two writes per cast where the floor has one).
Both cast rows compare with the same plain put burst. Two floors: ``plain``
is etcd3gw as it comes (over requests); ``plain-lean`` is etcd3gw over the
lean keep-alive HTTP session rpclib's driver gives it (lean_http.py), so
``rpclib/plain`` is what a user gains or loses against the plain client and
``rpclib/lean`` is rpclib's own cost over the same HTTP layer. Each system runs as a
server process and a client process on a private etcd (its own port and data
dir, started and stopped by this script); rounds are interleaved and medians
reported.

Run: ``bench/run etcd`` (or ``bench/.venv/bin/python bench/bench_etcd.py``);
``--quick`` scales everything down.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import etcd_workloads as wl
from workloads_common import importing_from

CTX = mp.get_context("spawn")
SYSTEMS = ("rpclib", "plain", "plain-lean")


class PrivateEtcd:
    """An etcd of this run's own on 127.0.0.1 (stopped by its pid at the end)."""

    def __init__(self) -> None:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.access(binary, os.X_OK):
            sys.exit("etcd is not installed (Debian: etcd-server)")
        self.folder = tempfile.mkdtemp(prefix="rpclib-bench-etcd-")
        self.port, peer = _free_port(), _free_port()
        client = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                binary,
                "--name",
                "bench",
                "--data-dir",
                f"{self.folder}/data",
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"bench=http://127.0.0.1:{peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{self.folder}/etcd.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.request("kv/range", {"key": "AA=="})
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    sys.exit("etcd did not start")
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://{self.endpoint}/v3/{path}", data=json.dumps(payload).encode()
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def count(self, prefix: str) -> int:
        import base64

        start = f"/{prefix}/"
        end = start[:-1] + "0"
        result = self.request(
            "kv/range",
            {
                "key": base64.b64encode(start.encode()).decode(),
                "range_end": base64.b64encode(end.encode()).decode(),
                "count_only": True,
            },
        )
        return int(result.get("count", 0))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_pair(
    system: str, etcd: PrivateEtcd, calls: int, casts: int, checkout: str | None = None
) -> dict[str, Any]:
    """Server and client processes of ``system`` (importing rpclib from ``checkout``)."""
    prefix = f"bench-{system}-{uuid.uuid4().hex[:6]}"
    ready, stop = CTX.Event(), CTX.Event()
    handled = CTX.Value("q", 0)
    server = CTX.Process(
        target=wl.serve, args=(system, etcd.endpoint, prefix, ready, stop, handled), daemon=True
    )
    with importing_from(checkout):
        server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{system} server did not start")
        results, sender = CTX.Pipe(duplex=False)
        client = CTX.Process(
            target=wl.drive,
            args=(system, etcd.endpoint, prefix, calls, casts, handled, sender),
            daemon=True,
        )
        with importing_from(checkout):
            client.start()
        if not results.poll(900):
            raise RuntimeError(f"{system} client gave no result")
        status, payload = results.recv()
        client.join(30)
        if status != "ok":
            raise RuntimeError(f"{system} client failed:\n{payload}")
        stop.set()
        server.join(30)
        payload["left"] = etcd.count(prefix)
        return dict(payload)
    finally:
        stop.set()
        if server.is_alive():
            server.join(10)
            if server.is_alive():
                server.kill()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--casts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--base", metavar="DIR", help="also measure rpclib imported from this checkout (A/B)"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.casts, args.rounds = 200, 500, 1
    etcd = PrivateEtcd()
    systems = [*SYSTEMS, "base"] if args.base else list(SYSTEMS)
    base = os.path.abspath(args.base) if args.base else None
    rows: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    left: dict[str, int] = {}
    try:
        for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
            for system in systems:
                if system == "base":
                    out = run_pair("rpclib", etcd, args.calls, args.casts, base)
                else:
                    out = run_pair(system, etcd, args.calls, args.casts)
                r = rows[system]
                r.setdefault("calls/s", []).append(args.calls / out["calls"])
                r.setdefault("call p50 us", []).append(pct(out["latencies"], 0.5) * 1e6)
                r.setdefault("call p99 us", []).append(pct(out["latencies"], 0.99) * 1e6)
                for kind in ("casts", "stored_casts"):
                    r.setdefault(f"{kind}/s", []).append(args.casts / out[kind])
                    r.setdefault(f"{kind} sent/s", []).append(args.casts / out[f"{kind} sent"])
                left[system] = out["left"]
    finally:
        etcd.stop()
    med = statistics.median
    print(
        f"etcd (3.4, private, 127.0.0.1): {args.calls} calls + {args.casts} casts per round, "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(
        f"{'':26}{'rpclib':>10}{'plain':>10}{'plain-lean':>12}"
        f"{'rpclib/plain':>14}{'rpclib/lean':>13}" + (f"{'rpclib/base':>13}" if base else "")
    )
    for metric, label in (
        ("calls/s", "sequential calls /s"),
        ("call p50 us", "  call p50 µs"),
        ("call p99 us", "  call p99 µs"),
        ("casts/s", "casts /s, at-most-once"),
        ("casts sent/s", "  sent /s"),
        ("stored_casts/s", "casts /s, at-least-once"),
        ("stored_casts sent/s", "  sent /s"),
    ):
        a, b, c = (med(rows[s][metric]) for s in SYSTEMS)
        line = f"{label:26}{a:10.0f}{b:10.0f}{c:12.0f}{a / b:14.2f}{a / c:13.2f}"
        if base:
            line += f"{a / med(rows['base'][metric]):13.2f}"
        print(line)
    print(
        f"keys left after a round: rpclib {left['rpclib']} (durable queue declarations), "
        f"plain {left['plain']}"
    )


if __name__ == "__main__":
    main()
