"""RPC over AMQP 1.0: rpclib amqp1:// vs plain proton vs rpclib rabbit://, same broker, same run.

Plain python-qpid-proton is the baseline: a Container server answering
requests by correlation id on a reply queue, BlockingConnection clients (one
per thread: a BlockingConnection belongs to one thread), casts sent unsettled
as durable messages to a durable queue, each waiting for ``accepted`` (like
rpclib's at-least-once casts). rpclib runs the same work through its public
API over ``amqp1://`` and, for context, ``rabbit://`` (AMQP 0-9-1). Each
system runs as a server process and a client process on the shared broker
(``rabbitmq_amqp1_0`` enabled) in a vhost made for the run; rounds are
interleaved and medians reported, with CPU per operation of client, server
and broker read from /proc.

Run: ``bench/run amqp1`` (or ``bench/.venv/bin/python bench/bench_amqp1.py``);
``--quick`` scales everything down; ``--base DIR`` measures rpclib's amqp1://
a second time importing rpclib from another checkout (an A/B in one run).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import amqp1_workloads as wl
import workloads_common as wc
from rabbit_broker import BROKER, Vhost, broker_pid, enable_plugin

CTX = mp.get_context("spawn")
VARIANTS = ["proton", "amqp1", "rabbit"]
LABELS = {
    "proton": "proton",
    "amqp1": "rpclib 1.0",
    "rabbit": "rpclib 091",
    "amqp1-base": "1.0 base",
}
BASE = "amqp1-base"
"""With ``--base``: rpclib over amqp1:// again, importing rpclib from that checkout."""


def run_pair(spec: wl.Spec, broker: int, checkout: str | None = None) -> list[dict[str, Any]]:
    ready, stop = CTX.Event(), CTX.Event()
    handled = CTX.Value("q", 0, lock=False)
    server = CTX.Process(target=wl.serve, args=(spec, ready, stop, handled), daemon=True)
    with wc.importing_from(checkout):
        server.start()
    client = None
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{spec.system} server did not start (exit {server.exitcode})")
        results, client_end = CTX.Pipe(duplex=False)
        pids = {"server": server.pid or 0, "broker": broker}
        client = CTX.Process(target=wl.drive, args=(spec, pids, handled, client_end), daemon=True)
        with wc.importing_from(checkout):
            client.start()
        if not results.poll(900):
            raise RuntimeError(f"{spec.system} client gave no result in 15 minutes")
        status, payload = results.recv()
        if status != "ok":
            raise RuntimeError(f"{spec.system} client failed:\n{payload}")
        return payload  # type: ignore[no-any-return]
    finally:
        stop.set()
        for proc in (client, server):
            if proc is not None:
                proc.join(15)
                if proc.is_alive():
                    proc.kill()
                    proc.join()


Metrics = dict[str, float]


def metrics(phases: list[dict[str, Any]]) -> Metrics:
    out: Metrics = {}
    for ph in phases:
        name, ops = ph["name"], ph["ops"]
        out[f"{name}/s"] = ops / ph["elapsed"]
        if ph["latencies"]:
            out[f"{name} p50"] = statistics.median(ph["latencies"]) * 1e6
        total = 0.0
        for part in ("client", "server", "broker"):
            total += ph["cpu"][part] / ops * 1e6
            out[f"{name} cpu {part}"] = ph["cpu"][part] / ops * 1e6
        out[f"{name} cpu total"] = total
    return out


ROWS = [
    ("calls/s", "sequential calls /s"),
    ("calls p50", "  call p50 µs"),
    ("calls cpu client", "  CPU µs/call client"),
    ("calls cpu server", "  CPU µs/call server"),
    ("calls cpu broker", "  CPU µs/call broker"),
    ("thread_calls/s", "calls /s, {threads} threads"),
    ("thread_calls cpu total", "  CPU µs/call total"),
    ("casts/s", "casts /s (confirmed, handled)"),
    ("casts cpu client", "  CPU µs/cast client"),
    ("casts cpu server", "  CPU µs/cast server"),
    ("casts cpu broker", "  CPU µs/cast broker"),
]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def print_table(med: dict[str, Metrics], cols: list[str], rounds: int, threads: int) -> None:
    ratios = [
        (a, b)
        for a, b in (
            ("amqp1", "proton"),
            ("rabbit", "proton"),
            ("amqp1", "rabbit"),
            ("amqp1", BASE),
        )
        if a in cols and b in cols
    ]
    print(
        f"\nAMQP 1.0 RPC at {BROKER}, {rounds} interleaved rounds, medians. Ratios first/second "
        "(for /s higher is better, for µs lower is)."
    )
    head = f"{'':32}" + "".join(f"{LABELS[c]:>12}" for c in cols)
    head += "".join(f"{LABELS[a].split()[-1] + '/' + LABELS[b].split()[-1]:>12}" for a, b in ratios)
    print(head)
    for key, label in ROWS:
        values = {c: med[c].get(key) for c in cols}
        if all(v is None for v in values.values()):
            continue
        line = f"{label.format(threads=threads):32}"
        line += "".join(f"{_fmt(values[c]):>12}" for c in cols)
        for a, b in ratios:
            va, vb = values[a], values[b]
            line += f"{va / vb:>12.2f}" if va is not None and vb else f"{'-':>12}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per round")
    parser.add_argument("--thread-calls", type=int, default=4000, help="calls per round, threaded")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--casts", type=int, default=5000, help="casts per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a tenth of every count")
    parser.add_argument(
        "--base", metavar="DIR", help="also measure amqp1:// with rpclib from this checkout (A/B)"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.thread_calls, args.casts = (
            max(200, n // 10) for n in (args.calls, args.thread_calls, args.casts)
        )
        args.rounds = 1
    variants = [v for v in (args.only.split(",") if args.only else VARIANTS) if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown --only {sorted(unknown)}")
    base = None
    if args.base:
        base = os.path.abspath(args.base)
        if not os.path.isfile(os.path.join(base, "rpclib", "__init__.py")):
            parser.error(f"--base {args.base}: no rpclib package there")
        variants.append(BASE)
    enable_plugin("rabbitmq_amqp1_0")
    vhost = Vhost("rpclib-bench1-")
    try:
        broker = broker_pid()
        print(
            f"vhost {vhost.name}; broker pid {broker}; {args.calls} sequential calls, "
            f"{args.thread_calls} calls on {args.threads} threads, {args.casts} casts per round"
        )
        runs: dict[str, list[Metrics]] = {v: [] for v in variants}
        t_start = time.monotonic()
        for rnd in range(args.rounds):
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
            for variant in order:
                scheme = {"proton": "amqp", "amqp1": "amqp1", "rabbit": "rabbit", BASE: "amqp1"}[
                    variant
                ]
                url = f"{scheme}://guest:guest@{BROKER}"
                spec = wl.Spec(
                    system="proton" if variant == "proton" else "rpclib",
                    url=url if variant == "proton" else f"{url}/{vhost.name}",
                    vhost=vhost.name,
                    topic=f"bench-{variant}-{rnd}",
                    calls=args.calls,
                    thread_calls=args.thread_calls,
                    threads=args.threads,
                    casts=args.casts,
                )
                t0 = time.monotonic()
                checkout = base if variant == BASE else None
                runs[variant].append(metrics(run_pair(spec, broker, checkout)))
                print(f"  round {rnd + 1} {variant:7} {time.monotonic() - t0:6.1f}s", flush=True)
        print(f"total {time.monotonic() - t_start:.0f}s")
        med = {
            v: {k: statistics.median(m[k] for m in rs if k in m) for k in set().union(*rs)}
            for v, rs in runs.items()
        }
        print_table(med, variants, args.rounds, args.threads)
    finally:
        vhost.delete()


if __name__ == "__main__":
    main()
