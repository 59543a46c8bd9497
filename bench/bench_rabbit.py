"""RPC over RabbitMQ: rpclib vs oslo.messaging vs plain kombu, same broker, same run.

Plain kombu is the limit: request/reply with correlation ids (over a reply
queue and, separately, over direct reply-to), and casts published with
publisher confirms as persistent messages to a durable queue, acked by the
consumer (like rpclib's at-least-once casts). oslo.messaging and rpclib do the
same work through their public APIs. Every system runs as a server process
and a client process on the shared broker, in a vhost made for the run and
deleted after it; rounds are interleaved and medians reported. CPU per
operation is read from /proc for the client, the server and the broker's
beam.smp around each measured phase (the broker is shared: other traffic on
it shows up in its column).

Run: ``bench/run rabbit`` (or ``bench/.venv/bin/python bench/bench_rabbit.py``).
``--quick`` scales everything down; ``--replies`` compares only kombu's reply
queue with direct reply-to; ``--profile [calls|casts]`` profiles rpclib's
sequential calls or its casts; ``--base DIR`` measures rpclib a second time
from another checkout (say ``git worktree add /tmp/base HEAD~1``), in the
same rounds: the one honest A/B of a change on a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rabbit_workloads as wl
from rabbit_broker import BROKER, Vhost, broker_pid
from workloads_common import importing_from

CTX = mp.get_context("spawn")
# variant -> (system, kombu reply mode)
VARIANTS: dict[str, tuple[str, str]] = {
    "kombu": ("kombu", "queue"),
    "kombu-direct": ("kombu", "direct"),
    "oslo": ("oslo", "queue"),
    "rpclib": ("rpclib", "queue"),
    "rpclib-pipe": ("rpclib-pipelined", "queue"),
    "kombu-pipe": ("kombu-pipelined", "queue"),
}
LABELS = {
    "kombu": "kombu kq",
    "kombu-direct": "kombu kd",
    "oslo": "oslo",
    "rpclib": "rpclib",
    "rpclib-pipe": "rpclib pl",
    "kombu-pipe": "kombu pl",
    "rpclib-base": "rpc base",
    "rpclib-pipe-base": "pl base",
}
CASTS_ONLY = {"rpclib-pipe", "kombu-pipe"}
"""Variants measured on casts alone (pipelining changes nothing for calls)."""
BASE_VARIANTS = {"rpclib-base": "rpclib", "rpclib-pipe-base": "rpclib-pipe"}
"""With ``--base``: the rpclib variants again, importing rpclib from that checkout."""


def run_pair(
    spec: wl.Spec, broker: int, profile: bool = False, checkout: str | None = None
) -> tuple[list[dict[str, Any]], str, str]:
    """Start the server process, run the client process against it; (phases, profiles).

    Both import rpclib from ``checkout`` if given.
    """
    ready, stop = CTX.Event(), CTX.Event()
    handled = CTX.Value("q", 0, lock=False)
    link, server_pipe = None, None
    if profile:
        server_pipe, server_end = CTX.Pipe()
        link = wl.ProfileLink(CTX.Event(), CTX.Event(), CTX.Event(), server_end)
    server = CTX.Process(
        target=wl.serve,
        args=(spec.system, spec.url, spec.topic, ready, stop, handled, link),
        daemon=True,
    )
    with importing_from(checkout):
        server.start()
    client = None
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{spec.system} server did not start (exit code {server.exitcode})")
        results_end, client_end = CTX.Pipe(duplex=False)
        pids = {"server": server.pid or 0, "broker": broker}
        client = CTX.Process(
            target=wl.drive, args=(spec, pids, handled, client_end, link), daemon=True
        )
        with importing_from(checkout):
            client.start()
        if not results_end.poll(900):
            raise RuntimeError(f"{spec.system} client gave no result in 15 minutes")
        status, payload, extra = results_end.recv()
        client.join(30)
        if status != "ok":
            raise RuntimeError(f"{spec.system} client failed:\n{payload}")
        stop.set()
        server_profile = ""
        if server_pipe is not None:
            server_pipe.send(spec.calls or spec.casts)
            if server_pipe.poll(120):
                server_profile = server_pipe.recv()
        server.join(30)
        return payload, extra, server_profile
    finally:
        stop.set()
        for proc in (client, server):
            if proc is not None and proc.is_alive():
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()


# --- statistics and the table ---------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Metrics = dict[str, float]


def metrics(phases: Iterable[dict[str, Any]]) -> Metrics:
    """Flat numbers from one client run's phases."""
    out: Metrics = {}
    for ph in phases:
        name, ops = ph["name"], ph["ops"]
        out[f"{name}/s"] = ops / ph["elapsed"]
        if ph["latencies"]:
            out[f"{name} p50"] = pct(ph["latencies"], 0.5) * 1e6
            out[f"{name} p99"] = pct(ph["latencies"], 0.99) * 1e6
        if ph["published"] is not None:
            out[f"{name} published/s"] = ops / ph["published"]
        total = 0.0
        for part in ("client", "server", "broker"):
            us = ph["cpu"][part] / ops * 1e6
            out[f"{name} cpu {part}"] = us
            total += us
        out[f"{name} cpu total"] = total
    return out


ROWS: list[tuple[str, str, bool]] = [  # (metric, label, higher is better)
    ("calls/s", "sequential calls /s", True),
    ("calls p50", "  call p50 µs", False),
    ("calls p99", "  call p99 µs", False),
    ("calls cpu client", "  CPU µs/call client", False),
    ("calls cpu server", "  CPU µs/call server", False),
    ("calls cpu broker", "  CPU µs/call broker", False),
    ("calls cpu total", "  CPU µs/call total", False),
    ("thread_calls/s", "calls /s, {threads} threads", True),
    ("thread_calls cpu client", "  CPU µs/call client", False),
    ("thread_calls cpu server", "  CPU µs/call server", False),
    ("thread_calls cpu broker", "  CPU µs/call broker", False),
    ("thread_calls cpu total", "  CPU µs/call total", False),
    ("casts published/s", "casts sent /s (confirmed)", True),
    ("casts/s", "casts handled /s, end to end", True),
    ("casts cpu client", "  CPU µs/cast client", False),
    ("casts cpu server", "  CPU µs/cast server", False),
    ("casts cpu broker", "  CPU µs/cast broker", False),
    ("casts cpu total", "  CPU µs/cast total", False),
]


def medians(runs: dict[str, list[Metrics]]) -> dict[str, Metrics]:
    out: dict[str, Metrics] = {}
    for variant, per_round in runs.items():
        keys = set().union(*per_round) if per_round else set()
        out[variant] = {k: statistics.median(m[k] for m in per_round if k in m) for k in keys}
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


RATIOS: list[tuple[str, str, str]] = [  # (numerator, denominator, column title)
    ("rpclib", "kombu", "rpc/kq"),
    ("rpclib", "oslo", "rpc/oslo"),
    ("kombu-direct", "kombu", "kd/kq"),
    ("rpclib-pipe", "kombu", "pl/kq"),
    ("rpclib-pipe", "kombu-pipe", "pl/kpl"),
    ("rpclib-pipe", "oslo", "pl/oslo"),
    ("rpclib", "rpclib-base", "rpc/base"),
    ("rpclib-pipe", "rpclib-pipe-base", "pl/base"),
]


def print_table(med: dict[str, Metrics], variants: list[str], rounds: int, threads: int) -> None:
    cols = [v for v in (*VARIANTS, *BASE_VARIANTS) if v in variants]
    ratios = [(a, b, t) for a, b, t in RATIOS if a in cols and b in cols]
    print(
        f"\nRabbitMQ RPC at {BROKER}, {rounds} interleaved rounds, medians. Ratios: first / "
        "second (for /s higher is better, for µs lower is). kq: kombu with a reply queue, "
        "kd: kombu with direct reply-to."
    )
    head = f"{'':30}" + "".join(f"{LABELS[c]:>10}" for c in cols)
    print(head + "".join(f"{t:>10}" for _, _, t in ratios))
    for key, label, _ in ROWS:
        values = {c: med[c].get(key) for c in cols}
        if all(v is None for v in values.values()):
            continue
        line = f"{label.format(threads=threads):30}"
        line += "".join(f"{_fmt(values[c]):>10}" for c in cols)
        line += "".join(f"{_ratio(values[a], values[b]):>10}" for a, b, _ in ratios)
        print(line)


# --- main -----------------------------------------------------------------------------------------


def rpclib_has_rabbit() -> bool:
    from rpclib.transports import available_schemes

    return "rabbit" in available_schemes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential calls per round")
    parser.add_argument("--thread-calls", type=int, default=2000, help="calls per round, threaded")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--casts", type=int, default=20000, help="casts per round")
    parser.add_argument(
        "--rounds", type=int, default=None, help="default 2 (5 with --replies); more: steadier"
    )
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a tenth of every count")
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="also measure rpclib imported from this checkout (A/B of a change, same rounds)",
    )
    parser.add_argument(
        "--replies", action="store_true", help="only kombu calls: reply queue vs direct reply-to"
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="calls",
        choices=["calls", "casts"],
        help="only rpclib sequential calls (or casts), under yappi in client and server",
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.thread_calls, args.casts = (
            max(100, n // 10) for n in (args.calls, args.thread_calls, args.casts)
        )
    variants = [v for v in (args.only.split(",") if args.only else VARIANTS) if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown --only {sorted(unknown)}")
    if args.rounds is None:
        args.rounds = 5 if args.replies else 2
    if args.replies:
        variants, args.casts = ["kombu", "kombu-direct"], 0
    if args.profile == "calls":
        variants, args.thread_calls, args.casts, args.rounds = ["rpclib"], 0, 0, 1
    elif args.profile == "casts":
        variants, args.calls, args.thread_calls, args.rounds = ["rpclib"], 0, 0, 1
    if "rpclib" in variants and not rpclib_has_rabbit():
        print("rpclib: no rabbit:// driver installed yet, rpclib columns skipped")
        variants = [v for v in variants if not v.startswith("rpclib")]
        if args.profile:
            return
    if args.base:
        base = os.path.abspath(args.base)
        if not os.path.isfile(os.path.join(base, "rpclib", "__init__.py")):
            parser.error(f"--base {args.base}: no rpclib package there")
        variants += [b for b, v in BASE_VARIANTS.items() if v in variants]

    vhost = Vhost("rpclib-bench-")
    try:
        broker = broker_pid()
        payload_json = len(json.dumps(wl.PAYLOAD))
        payload_mp = len(wl.packb(wl.PAYLOAD))
        print(
            f"vhost {vhost.name}; broker beam.smp pid {broker}; payload {payload_json} B JSON, "
            f"{payload_mp} B msgpack; {args.calls} sequential calls, {args.thread_calls} calls "
            f"on {args.threads} threads, {args.casts} casts per round"
        )
        runs: dict[str, list[Metrics]] = {v: [] for v in variants}
        profiles: list[str] = []
        t_start = time.monotonic()
        for rnd in range(args.rounds):
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
            for variant in order:
                measured = BASE_VARIANTS.get(variant, variant)
                system, reply = VARIANTS[measured]
                spec = wl.Spec(
                    system=system,
                    url=vhost.url("amqp" if system.startswith("kombu") else "rabbit"),
                    topic=f"bench-{variant}-{rnd}",
                    calls=0 if measured in CASTS_ONLY else args.calls,
                    thread_calls=0 if measured in CASTS_ONLY else args.thread_calls,
                    threads=args.threads,
                    casts=0 if variant == "kombu-direct" else args.casts,
                    reply=reply,
                )
                t0 = time.monotonic()
                checkout = base if variant in BASE_VARIANTS else None
                phases, client_profile, server_profile = run_pair(
                    spec, broker, bool(args.profile), checkout
                )
                runs[variant].append(metrics(phases))
                profiles += [client_profile, server_profile]
                print(f"  round {rnd + 1} {variant:13} {time.monotonic() - t0:6.1f}s", flush=True)
        print(f"total {time.monotonic() - t_start:.0f}s")
        print_table(medians(runs), variants, args.rounds, args.threads)
        if args.profile:
            print("(measured under yappi: far slower than a plain run)")
        if any(v.startswith("kombu") for v in variants):
            print("kombu: one connection per calling thread, replies not acked, no heartbeats.")
        if "oslo" in variants:
            print(
                "oslo: amqp_durable_queues=true, publisher confirms (always on in oslo), "
                "threading executor; acks requests on receipt (rpclib: after handling)."
            )
        for text in profiles:
            if text:
                print("\n" + text)
    finally:
        vhost.delete()


if __name__ == "__main__":
    main()
