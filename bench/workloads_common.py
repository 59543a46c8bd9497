"""What the workload modules of the RPC benchmarks share.

``rabbit_workloads``, ``amqp1_workloads`` and ``etcd_workloads`` run a server
process and a client process per system; this module holds the pieces they
have in common: timeouts and warm-up counts, CPU times read from
``/proc/<pid>/stat``, msgpack bodies, the measured phases (sequential calls,
calls on threads, casts waited for until the server handled them), and the
rpclib side (an echo/note endpoint counting casts, the server loop, a client).

Each workload module keeps its own payload and passes it in. Nothing here
imports rpclib at module level: the processes import it when they start, so
that ``--base`` (:func:`importing_from`) can point them at another checkout.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import msgpack

CALL_TIMEOUT = 30.0
CAST_TIMEOUT = 300.0
WARMUP = 200
TICK = os.sysconf("SC_CLK_TCK")


# --- A/B of checkouts ---------------------------------------------------------------


@contextlib.contextmanager
def importing_from(checkout: str | None) -> Iterator[None]:
    """Processes started inside import rpclib from ``checkout`` (None: this one).

    Spawned children take the parent's ``sys.path`` (not PYTHONPATH), so the
    checkout goes first on it while they start.
    """
    if checkout is None:
        yield
        return
    sys.path.insert(0, checkout)
    try:
        yield
    finally:
        sys.path.remove(checkout)


# --- measurement -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """CPU seconds the processes in ``pids`` spend between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}


@dataclass
class PhaseResult:
    """One measured phase: ``ops`` operations in ``elapsed`` seconds."""

    name: str
    ops: int
    elapsed: float
    cpu: dict[str, float]
    latencies: list[float] = field(default_factory=list)
    published: float | None = None  # casts: when the last send returned


# --- bodies ------------------------------------------------------------------------


def packb(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


# --- phases --------------------------------------------------------------------------
# A client is any object with caller() (a new callable doing one echo call) and cast().


def warm_up_calls(call: Callable[[], Any], payload: Any) -> None:
    """Check that ``call`` echoes ``payload``, then make WARMUP calls."""
    result = call()
    if result != payload:
        raise AssertionError(f"echo returned {result!r}")
    for _ in range(WARMUP):
        call()


def timed_calls(call: Callable[[], Any], count: int, meter: CpuMeter) -> PhaseResult:
    """``count`` sequential calls, each one's latency recorded."""
    latencies = []
    meter.start()
    t0 = time.perf_counter()
    for _ in range(count):
        t1 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t1)
    elapsed = time.perf_counter() - t0
    cpu = meter.stop()
    return PhaseResult("calls", count, elapsed, cpu, latencies)


def threaded_calls(
    client: Any, total: int, threads: int, meter: CpuMeter, *, clock_after_barrier: bool = False
) -> PhaseResult:
    """``total`` calls spread over ``threads`` threads, each with its own caller.

    The CPU meter starts before the threads are released. The clock starts
    before the main thread's barrier wait or, with ``clock_after_barrier``,
    once it returns (the two benchmarks have always differed there).
    """
    per_thread = total // threads
    callers = [client.caller() for _ in range(threads)]
    for call in callers:
        for _ in range(20):
            call()
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            for _ in range(per_thread):
                call()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(c,)) for c in callers]
    for t in workers:
        t.start()
    meter.start()
    if clock_after_barrier:
        barrier.wait()
        t0 = time.perf_counter()
    else:
        t0 = time.perf_counter()
        barrier.wait()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = meter.stop()
    if errors:
        raise errors[0]
    return PhaseResult("thread_calls", per_thread * threads, elapsed, cpu)


def wait_handled(
    handled: Synchronized[int], target: int, timeout: float = CAST_TIMEOUT, poll: float = 0.001
) -> None:
    """Poll every ``poll`` seconds until the server has handled ``target`` casts."""
    deadline = time.monotonic() + timeout
    while handled.value < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server handled {handled.value} of {target} casts")
        time.sleep(poll)


def timed_casts(
    client: Any, count: int, meter: CpuMeter, handled: Synchronized[int]
) -> PhaseResult:
    """WARMUP casts, then ``count`` casts timed until the server has handled them all."""
    base = handled.value
    for _ in range(WARMUP):
        client.cast()
    wait_handled(handled, base + WARMUP)
    base = handled.value
    meter.start()
    t0 = time.perf_counter()
    for _ in range(count):
        client.cast()
    published = time.perf_counter() - t0
    wait_handled(handled, base + count)
    elapsed = time.perf_counter() - t0
    cpu = meter.stop()
    return PhaseResult("casts", count, elapsed, cpu, published=published)


# --- rpclib ---------------------------------------------------------------------------


class Counter:
    """Casts handled, visible to the client process.

    ``lock`` guards the increment (``handled.value += 1`` is a read and a
    write); by default a lock of this process, or e.g. ``handled.get_lock()``.
    """

    def __init__(
        self, handled: Synchronized[int], lock: AbstractContextManager[Any] | None = None
    ) -> None:
        self._handled = handled
        self._lock = lock if lock is not None else threading.Lock()

    def bump(self) -> None:
        with self._lock:
            self._handled.value += 1


class RpclibEndpoint:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def echo(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def note(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        self.counter.bump()


def run_rpclib_server(url: str, topic: str, endpoint: Any, ready: Event, stop: Event) -> None:
    """An RPCServer for ``topic`` (server "s1") on ``url`` until ``stop`` is set."""
    import rpclib

    with rpclib.get_transport(url) as transport:
        target = rpclib.Target(topic=topic, server="s1")
        server = rpclib.RPCServer(transport, target, [endpoint])
        server.start()
        ready.set()
        stop.wait()
        server.stop()
        server.wait()


class RpclibClient:
    """Echo calls at most once; casts at least once, each confirmed before the next."""

    def __init__(self, url: str, topic: str, payload: dict[str, Any]) -> None:
        import rpclib

        self.payload = payload
        self.transport = rpclib.get_transport(url)
        self.client = rpclib.RPCClient(
            self.transport, rpclib.Target(topic=topic), timeout=CALL_TIMEOUT
        )
        self.caster = self.client.prepare(at_least_once=True)

    def caller(self) -> Callable[[], Any]:
        payload = self.payload
        return lambda: self.client.call({}, "echo", payload=payload)

    def cast(self) -> None:
        self.caster.cast({}, "note", payload=self.payload)

    def close(self) -> None:
        self.transport.close()
