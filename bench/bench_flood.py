"""A node flooding a server harms only itself: a valid caller's latency with and without a flood.

One server (a policy allowing only the caller's ``echo``), one valid caller
making sequential calls; in the *cpu burner* phase a process that sends
nothing spins on one core (what sharing the 2 cores costs by itself); in the
*flood* phases a rogue node with valid credentials of its own sends, paced
(``--rate``) and then as fast as it can: garbage straight into the
server's queues (at-most-once and at-least-once) and casts its policy
forbids (at-most-once and at-least-once). Phases alternate, quiet then
flood, for several rounds; the table gives the caller's p50 and p99 per
phase (all rounds pooled) and the flood's ratio to quiet. Target: p99 during
the flood within 2x of quiet.

- ``memory://``: a bus with an account per principal; the three parts are
  threads of this process (so the flood also competes for the GIL).
- ``rabbit://``: the shared broker, a vhost and a broker user per principal
  made for the run; server and rogue are processes of their own, the caller
  is this one. Senders are the broker-verified users (``user_id``); *signed*
  adds Ed25519 signatures. ``--base DIR`` runs the rabbit:// server a
  second time from the rpclib in DIR (e.g. a checkout of main), same run.

Run: ``bench/run flood`` (or ``python bench/bench_flood.py``); ``--quick`` for a short run.
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import contextlib

import rpclib
from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.exceptions import Undeliverable
from rpclib.serializer import Serializer
from rpclib.transports.base import Address, Guarantee

CTX = mp.get_context("spawn")
TOPIC = "svc"
SERVER = "s1"
POLICY = rpclib.Policy(
    [rpclib.Allow("caller", "bench-caller-*", namespace="svc", methods=["echo"])]
)
PRINCIPALS = ("server", "caller", "rogue")
SATURATING_SECONDS = 5.0
"""How long the caller measures during the flood as fast as the rogue can."""


class Echo:
    target = rpclib.Target(namespace="svc", version="1.0")

    def echo(self, ctx: dict[str, Any], value: int) -> int:
        return value


# --- the parts ---------------------------------------------------------------------------


def start_server(
    transport: rpclib.Transport, policy: rpclib.Policy | None = POLICY
) -> rpclib.RPCServer:
    server = rpclib.RPCServer(
        transport, rpclib.Target(topic=TOPIC, server=SERVER), [Echo()], policy=policy
    )
    server.start()
    return server


def forbidden_cast(serializer: Serializer, at_least_once: bool, method: str) -> bytes:
    """A well-formed cast of ``svc.<method>``, which the server refuses the rogue."""
    header: dict[str, Any] = {
        envelope.METHOD: method,
        envelope.VERSION: "1.0",
        envelope.CONTEXT: {},
        envelope.NAMESPACE: "svc",
    }
    if at_least_once:
        header[envelope.AT_LEAST_ONCE] = True
    return envelope.encode(serializer, Kind.CAST, envelope.new_message_id(), header, {"value": 1})


def flood(
    transport: rpclib.Transport, stop: Callable[[], bool], rate: float, method: str = "echo"
) -> int:
    """Send garbage and forbidden casts, never waiting for the broker, until ``stop()``.

    At ``rate`` messages per second (0: as fast as the rogue can).

    Per round of 20: 8 garbage and 8 forbidden casts at-most-once (half to the
    server's own queue, half to the topic's), 2 garbage and 2 forbidden casts
    at-least-once (pipelined: confirmed in the background). Returns how many
    were sent.
    """
    driver = transport.driver
    live = Address("rpclib", TOPIC, server=SERVER)
    shared = Address("rpclib", TOPIC)
    serializer = Serializer()
    ignore: Callable[[Any], None] = lambda _exc: None  # noqa: E731
    sent = 0
    start = time.monotonic()
    while not stop():
        if rate > 0:
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        for i in range(16):
            target = live if i % 2 else shared
            body = b"\x93garbage %d" % sent if i < 8 else forbidden_cast(serializer, False, method)
            # memory:// refuses at once what no consumer can take now
            with contextlib.suppress(Undeliverable):
                driver.send(target, body, guarantee=Guarantee.AT_MOST_ONCE, on_undeliverable=ignore)
            sent += 1
        for body in (b"\x93kept garbage", forbidden_cast(serializer, True, method)) * 2:
            driver.send_pipelined(shared, body, on_outcome=ignore)
            sent += 1
    return sent


def measure(transport: rpclib.Transport, calls: int, budget: float) -> list[float]:
    """Latencies (ms) of up to ``calls`` sequential calls (for ``budget`` seconds at most).

    A call that times out (30 s) counts as 30,000 ms.
    """
    client = rpclib.RPCClient(
        transport, rpclib.Target(topic=TOPIC, namespace="svc", version="1.0"), timeout=30
    )
    out = []
    end = time.monotonic() + budget
    for i in range(calls):
        t0 = time.perf_counter()
        with contextlib.suppress(rpclib.ReplyTimeout):
            client.call({}, "echo", value=i)
        out.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > end:
            break
    return out


Phases = dict[str, list[float]]


def _burn(stop: Any) -> None:
    """Spin on the CPU, sending nothing, until ``stop`` is set (the *cpu burner* phase)."""
    n = 0
    while not stop.is_set():
        for _ in range(10_000):
            n += 1


def measure_burning(caller: rpclib.Transport, calls: int) -> list[float]:
    """The caller's latencies while a process that sends nothing takes a core.

    Separates what sharing the 2 cores costs from what the flood's messages do.
    """
    stop = CTX.Event()
    burner = CTX.Process(target=_burn, args=(stop,), daemon=True)
    burner.start()
    time.sleep(0.5)
    try:
        return measure(caller, calls, 60)
    finally:
        stop.set()
        burner.join(30)


def run_phases(
    caller: rpclib.Transport,
    start_rogue: Callable[[float], Callable[[], int]],
    drained: Callable[[], bool],
    rounds: int,
    calls: int,
    rates: dict[str, float],
    label: str,
) -> Phases:
    """Quiet, then each flood (started, measured, stopped, drained), ``rounds`` times."""
    measure(caller, 20, 10)  # warm up
    out: Phases = {"quiet": [], "cpu burner": [], **{name: [] for name in rates}}
    for round_ in range(rounds):
        out["quiet"] += measure(caller, calls, 60)
        out["cpu burner"] += measure_burning(caller, calls)
        for name, rate in rates.items():
            last = round_ == rounds - 1 and name == list(rates)[-1]
            stop = start_rogue(rate)
            time.sleep(1.0)  # the rogue connects and gets going
            # A flood faster than the server can drain builds a backlog in the queue every
            # caller shares (the broker keeps it FIFO): measured for a few seconds only.
            out[name] += measure(caller, calls, 60 if rate else SATURATING_SECONDS)
            sent = stop()
            t0 = time.monotonic()
            while not last and not drained() and time.monotonic() - t0 < 300:
                time.sleep(0.2)
            waited = f"drained {time.monotonic() - t0:.1f}s"
            after = "not waited for (the bus goes)" if last else waited
            print(f"  {label} {name}: rogue sent {sent}; backlog {after} after it stopped")
    return out


# --- memory:// ------------------------------------------------------------------------------


def memory_rounds(rounds: int, calls: int, rates: dict[str, float]) -> Phases:
    from rpclib.transports.memory import add_account, reset_bus

    bus = f"flood-{uuid.uuid4().hex[:8]}"
    for name in PRINCIPALS:
        add_account(bus, name, name * 2)
    login = {n: rpclib.get_transport(f"memory://{n}:{n * 2}@{bus}") for n in PRINCIPALS}
    server = start_server(login["server"])

    def start_rogue(rate: float) -> Callable[[], int]:
        done = threading.Event()
        sent: list[int] = []
        rogue = threading.Thread(
            target=lambda: sent.append(flood(login["rogue"], done.is_set, rate)), daemon=True
        )
        rogue.start()

        def stop() -> int:
            done.set()
            rogue.join()
            return sent[0]

        return stop

    def drained() -> bool:
        return login["server"].driver.stats()["ready"] == 0  # type: ignore[attr-defined]

    try:
        return run_phases(login["caller"], start_rogue, drained, rounds, calls, rates, "memory://")
    finally:
        server.stop()
        server.wait()
        for transport in login.values():
            transport.close()
        reset_bus(bus)


# --- rabbit:// ------------------------------------------------------------------------------


def _signed(url: str, keys: str | None, principal: str) -> rpclib.Transport:
    if keys is None:
        return rpclib.get_transport(url)
    from rpclib.signing import Signing, SigningKey, TrustStore

    key = SigningKey.from_file(principal, os.path.join(keys, f"{principal}.key"))
    return rpclib.get_transport(url, signing=Signing(key, TrustStore(directory=keys + "/trust")))


def _serve_main(url: str, keys: str | None, policy: bool) -> None:
    """``--serve``: run the server until stdin closes (a process of its own, see ServerProcess)."""
    transport = _signed(url, keys, "server")
    server = start_server(transport, POLICY if policy else None)
    print("ready", flush=True)
    sys.stdin.read()
    server.stop()
    server.wait()
    stats = server.stats
    print(
        f"  rabbit:// server (rpclib from {os.path.dirname(os.path.dirname(rpclib.__file__))}): "
        f"malformed {stats.malformed}, rejected {stats.rejected}, forbidden {stats.forbidden}, "
        f"dead-lettered {stats.dead_lettered}, shed {getattr(stats, 'shed', '-')}",
        flush=True,
    )
    transport.close()


class ServerProcess:
    """The server, a process of its own started from this script with ``--serve``.

    A subprocess rather than multiprocessing: with ``base`` it must import rpclib
    from that directory, which a spawned child (given this process's sys.path)
    would not.
    """

    def __init__(self, url: str, keys: str | None, base: str | None) -> None:
        env = dict(os.environ)
        if base is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [base, env.get("PYTHONPATH")]))
        args = [sys.executable, os.path.abspath(__file__), "--serve", url, "--policy"]
        if keys is not None:
            args += ["--keys", keys]
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(
            args, env=env, cwd=base or None, stdin=pipe, stdout=pipe, text=True
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the rabbit:// server did not start")

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        print(self.proc.stdout.read(), end="", flush=True)
        self.proc.wait(60)


def _rogue_process(
    url: str, keys: str | None, rate: float, stop: Any, sent: Any, policy: bool
) -> None:
    transport = _signed(url, keys, "rogue")
    # Without a policy (an older server), the rogue's casts name a method the server
    # lacks instead, refused by the same path.
    sent.value = flood(transport, stop.is_set, rate, "echo" if policy else "forbidden")
    transport.close()


def rabbit_rounds(
    rounds: int, calls: int, rates: dict[str, float], signed: bool, base: str | None = None
) -> Phases:
    """The rabbit:// rounds; with ``base``, the server runs rpclib from that checkout."""
    from rabbit_broker import BROKER, Vhost, rabbitmqctl

    from rpclib.signing import SigningKey, TrustStore

    vhost = Vhost("rpclib-bench-flood-")
    users = {n: f"bench-{n}-{os.getpid()}" for n in PRINCIPALS}
    for user in users.values():
        rabbitmqctl("add_user", user, "secret")
        rabbitmqctl("set_permissions", "-p", vhost.name, user, ".*", ".*", ".*")

    def delete_users() -> None:
        for user in users.values():
            rabbitmqctl("delete_user", user)

    atexit.register(delete_users)  # also when the run is interrupted

    def url(principal: str) -> str:
        return f"rabbit://{users[principal]}:secret@{BROKER}/{vhost.name}"

    keys = tempfile.TemporaryDirectory()
    os.mkdir(keys.name + "/trust")
    trust = TrustStore(directory=keys.name + "/trust")
    for name in PRINCIPALS:
        key = SigningKey.generate(name)
        key.save(os.path.join(keys.name, f"{name}.key"))
        trust.write(key)
    key_dir = keys.name if signed else None

    def start_rogue(rate: float) -> Callable[[], int]:
        stop, sent = CTX.Event(), CTX.Value("q", 0)
        rogue = CTX.Process(
            target=_rogue_process, args=(url("rogue"), key_dir, rate, stop, sent, True)
        )
        rogue.start()

        def stopped() -> int:
            stop.set()
            rogue.join(120)
            return int(sent.value)

        return stopped

    def drained() -> bool:
        out = rabbitmqctl(
            "list_queues", "-p", vhost.name, "-q", "--no-table-headers", "name", "messages"
        )
        return all(
            int(n) == 0
            for q, n in (line.split() for line in out.splitlines())
            if q.startswith("rpclib.svc")
        )

    server = ServerProcess(url("server"), key_dir, base)
    caller = None
    try:
        server.wait_ready()
        caller = _signed(url("caller"), key_dir, "caller")
        label = "rabbit:// signed" if signed else "rabbit://"
        if base is not None:
            label += " base"
        return run_phases(caller, start_rogue, drained, rounds, calls, rates, label)
    finally:
        if caller is not None:
            caller.close()
        server.stop()
        atexit.unregister(delete_users)
        delete_users()
        vhost.delete()
        keys.cleanup()


# --- report -----------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="calls per phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=2000, help="messages/s of the paced flood (default 2000)"
    )
    parser.add_argument("--quick", action="store_true", help="200 calls, 2 rounds")
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="also run the rabbit:// server from the rpclib in DIR (a checkout of an older "
        "commit: git archive COMMIT rpclib | tar -x -C DIR), in the same run",
    )
    parser.add_argument("--only", choices=["memory", "rabbit", "rabbit-signed"], action="append")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve_main(args.serve, args.keys, args.policy)
        return
    if args.quick:
        args.calls, args.rounds = 200, 2
    rates = {f"flood {args.rate:g}/s": args.rate, "flood max": 0.0}
    which = args.only or ["memory", "rabbit", "rabbit-signed"]
    results: dict[str, Phases] = {}
    if "memory" in which:
        results["memory://"] = memory_rounds(args.rounds, args.calls, rates)
    if "rabbit" in which:
        results["rabbit://"] = rabbit_rounds(args.rounds, args.calls, rates, signed=False)
    if args.base and "rabbit" in which:
        results["rabbit:// base"] = rabbit_rounds(
            args.rounds, args.calls, rates, signed=False, base=args.base
        )
    if "rabbit-signed" in which:
        results["rabbit:// signed"] = rabbit_rounds(args.rounds, args.calls, rates, signed=True)
    print(
        f"\nvalid caller's sequential calls, {args.rounds} rounds of up to {args.calls} calls "
        "per phase: quiet, and while another account floods (paced, then as fast as it can); ms"
    )
    print(f"{'':18}{'phase':>16}{'calls':>7}{'p50':>9}{'p99':>9}{'p99 vs quiet':>14}")
    for name, phases in results.items():
        quiet99 = pct(phases["quiet"], 0.99)
        for phase, samples in phases.items():
            p99 = pct(samples, 0.99)
            print(
                f"{name:18}{phase:>16}{len(samples):>7}{statistics.median(samples):>9.2f}"
                f"{p99:>9.2f}{p99 / quiet99:>13.2f}x"
            )
    print("target: p99 during the flood within 2x of quiet")


if __name__ == "__main__":
    main()
