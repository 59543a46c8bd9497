"""Server and client processes for ``bench/bench_rabbit.py``.

Three systems do the same work against one broker: plain kombu (the limit:
request/reply with correlation ids over a reply queue or direct reply-to;
confirmed persistent casts to a durable queue), oslo.messaging and rpclib.
Each runs as a server process and a client process; the client brackets
every measured phase with the CPU times of the client, the server and the
broker, read from ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import workloads_common as wc
from workloads_common import (
    CALL_TIMEOUT,
    CAST_TIMEOUT,
    Counter,
    CpuMeter,
    PhaseResult,
    packb,
    unpackb,
)

# oslo.messaging pulls in eventlet, which warns on import in every process.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

PAYLOAD: dict[str, Any] = {
    "uuid": "5d2f6c1e-8a4b-4f0e-9b1a-3c7d2e6f8a90",
    "name": "vm-0001",
    "host": "compute-017",
    "project_id": "9f1c0b7e2d4a4c3b8e5f6a7b8c9d0e1f",
    "flavor": {"name": "m1.small", "vcpus": 2, "memory_mb": 2048, "root_gb": 20},
    "image_ref": "cirros-0.6.2",
    "vm_state": "active",
    "task_state": None,
    "power_state": 1,
    "launched_at": "2026-11-21T13:40:00Z",
    "metadata": {"env": "bench", "owner": "rpclib"},
    "tags": ["web"],
}


@dataclass
class Spec:
    """What a client process runs; a count of 0 skips the phase."""

    system: str
    url: str
    topic: str
    calls: int
    thread_calls: int
    threads: int
    casts: int
    reply: str = "queue"  # kombu only: "queue" or "direct"


# --- kombu (the limit) ------------------------------------------------------------------


MSGPACK = {"content_type": "application/x-msgpack", "content_encoding": "binary"}


def _kombu_queues(topic: str) -> tuple[Any, Any]:
    import kombu

    rpc = kombu.Queue(f"{topic}.rpc", routing_key=f"{topic}.rpc", durable=False, auto_delete=True)
    casts = kombu.Queue(f"{topic}.casts", routing_key=f"{topic}.casts", durable=True)
    return rpc, casts


def kombu_server(
    url: str, topic: str, ready: Event, stop: Event, handled: Synchronized[int]
) -> None:
    """Answer calls (reply to ``reply_to`` with the correlation id), ack casts."""
    import kombu

    rpc_q, cast_q = _kombu_queues(topic)
    with kombu.Connection(url, heartbeat=0) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 32, False)
        producer = kombu.Producer(channel)

        def on_call(message: Any) -> None:
            request = unpackb(message.body)
            producer.publish(
                packb(request),
                routing_key=message.properties["reply_to"],
                correlation_id=message.properties["correlation_id"],
                **MSGPACK,
            )
            message.ack()

        def on_cast(message: Any) -> None:
            unpackb(message.body)
            message.ack()
            handled.value += 1

        consumers = [
            kombu.Consumer(channel, queues=[rpc_q], on_message=on_call),
            kombu.Consumer(channel, queues=[cast_q], on_message=on_cast),
        ]
        for consumer in consumers:
            consumer.consume()
        ready.set()
        while not stop.is_set():
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=0.2)


class KombuCaller:
    """One thread's request/reply client: its own connection and reply address."""

    def __init__(self, url: str, topic: str, reply: str) -> None:
        import kombu

        self.conn = kombu.Connection(url, heartbeat=0)
        channel = self.conn.channel()
        self.routing_key = f"{topic}.rpc"
        if reply == "direct":
            self.reply_to = "amq.rabbitmq.reply-to"
            queue = kombu.Queue(self.reply_to, no_declare=True)
        else:
            self.reply_to = f"{topic}.reply.{uuid.uuid4().hex}"
            queue = kombu.Queue(self.reply_to, exclusive=True, auto_delete=True)
        self.consumer = kombu.Consumer(channel, queues=[queue], no_ack=True, on_message=self._got)
        self.consumer.consume()
        self.producer = kombu.Producer(channel)
        self._waiting = ""
        self._result: Any = None

    def _got(self, message: Any) -> None:
        if message.properties.get("correlation_id") == self._waiting:
            self._result = unpackb(message.body)

    def __call__(self) -> Any:
        self._waiting, self._result = uuid.uuid4().hex, None
        self.producer.publish(
            packb(PAYLOAD),
            routing_key=self.routing_key,
            correlation_id=self._waiting,
            reply_to=self.reply_to,
            **MSGPACK,
        )
        deadline = time.monotonic() + CALL_TIMEOUT
        while self._result is None:
            self.conn.drain_events(timeout=max(0.0, deadline - time.monotonic()))
        return self._result

    def close(self) -> None:
        self.conn.release()


class KombuClient:
    def __init__(self, spec: Spec) -> None:
        import kombu

        self.spec = spec
        self._callers: list[KombuCaller] = []
        self._cast_conn = kombu.Connection(
            spec.url, heartbeat=0, transport_options={"confirm_publish": True}
        )
        self._cast_producer = kombu.Producer(self._cast_conn.channel())
        self._cast_key = f"{spec.topic}.casts"

    def caller(self) -> Callable[[], Any]:
        caller = KombuCaller(self.spec.url, self.spec.topic, self.spec.reply)
        self._callers.append(caller)
        return caller

    def cast(self) -> None:
        self._cast_producer.publish(
            packb(PAYLOAD), routing_key=self._cast_key, delivery_mode=2, mandatory=True, **MSGPACK
        )

    def close(self) -> None:
        for caller in self._callers:
            caller.close()
        self._cast_conn.release()


class KombuPipelinedClient(KombuClient):
    """Casts with publisher confirms not waited for one by one: the baseline of pipelining.

    Up to ``WINDOW`` publishes are unconfirmed at once (rpclib's default
    window); acks are read as py-amqp reads them (before each publish) and
    whenever the window is full; close() waits for the last confirm.
    """

    WINDOW = 1024

    def __init__(self, spec: Spec) -> None:
        import kombu

        self.spec = spec
        self._callers = []
        self._cast_conn = kombu.Connection(spec.url, heartbeat=0)
        channel = self._cast_conn.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self._cast_producer = kombu.Producer(channel)
        self._cast_key = f"{spec.topic}.casts"
        self._published = 0
        self._confirmed = 0

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._confirmed = max(self._confirmed, tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        raise RuntimeError(f"the broker refused publish {tag}")

    def cast(self) -> None:
        super().cast()
        self._published += 1
        while self._published - self._confirmed >= self.WINDOW:
            self._cast_conn.drain_events(timeout=CAST_TIMEOUT)

    def close(self) -> None:
        while self._confirmed < self._published:
            self._cast_conn.drain_events(timeout=CAST_TIMEOUT)
        super().close()


# --- oslo.messaging ----------------------------------------------------------------------


@contextlib.contextmanager
def _oslo_transport(url: str) -> Iterator[Any]:
    """An oslo.messaging RPC transport; durable queues, to match at-least-once casts.

    It uses ``cfg.CONF``, as services do: oslo.messaging 18 registers some of
    its options (tracing) only there.
    """
    import oslo_messaging
    from oslo_config import cfg

    logging.basicConfig(level=logging.ERROR)
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("[oslo_messaging_rabbit]\namqp_durable_queues = true\n")
        f.flush()
        conf = cfg.CONF
        conf(args=["--config-file", f.name], project="bench", default_config_files=[])
        transport = oslo_messaging.get_rpc_transport(conf, url=url)
    try:
        yield transport
    finally:
        transport.cleanup()


class OsloEndpoint:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def echo(self, ctxt: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def note(self, ctxt: dict[str, Any], payload: dict[str, Any]) -> None:
        self.counter.bump()


def oslo_server(
    url: str, topic: str, ready: Event, stop: Event, handled: Synchronized[int]
) -> None:
    import oslo_messaging

    with _oslo_transport(url) as transport:
        target = oslo_messaging.Target(topic=topic, server="s1")
        endpoints = [OsloEndpoint(Counter(handled))]
        server = oslo_messaging.get_rpc_server(transport, target, endpoints, executor="threading")
        server.start()
        ready.set()
        stop.wait()
        server.stop()
        server.wait()


class OsloClient:
    def __init__(self, spec: Spec) -> None:
        import oslo_messaging

        self._cm = _oslo_transport(spec.url)
        transport = self._cm.__enter__()
        target = oslo_messaging.Target(topic=spec.topic)
        self.client = oslo_messaging.get_rpc_client(transport, target, timeout=CALL_TIMEOUT)

    def caller(self) -> Callable[[], Any]:
        return lambda: self.client.call({}, "echo", payload=PAYLOAD)

    def cast(self) -> None:
        self.client.cast({}, "note", payload=PAYLOAD)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


# --- rpclib ----------------------------------------------------------------------------------


def rpclib_server(
    url: str, topic: str, ready: Event, stop: Event, handled: Synchronized[int]
) -> None:
    wc.run_rpclib_server(url, topic, wc.RpclibEndpoint(Counter(handled)), ready, stop)


class RpclibClient(wc.RpclibClient):
    def __init__(self, spec: Spec) -> None:
        super().__init__(spec.url, spec.topic, PAYLOAD)


class RpclibPipelinedClient(RpclibClient):
    """At-least-once casts that do not wait for each confirm (``pipelined=True``).

    Every cast is still confirmed by the broker before the run ends: the phase
    waits for the server to handle them all, and close() flushes.
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.caster = self.client.prepare(at_least_once=True, pipelined=True)

    def close(self) -> None:
        self.caster.flush(timeout=CAST_TIMEOUT)
        super().close()


SERVERS: dict[str, Callable[[str, str, Event, Event, Synchronized[int]], None]] = {
    "kombu": kombu_server,
    "kombu-pipelined": kombu_server,
    "oslo": oslo_server,
    "rpclib": rpclib_server,
    "rpclib-pipelined": rpclib_server,
}
CLIENTS: dict[str, Callable[[Spec], Any]] = {
    "kombu": KombuClient,
    "kombu-pipelined": KombuPipelinedClient,
    "oslo": OsloClient,
    "rpclib": RpclibClient,
    "rpclib-pipelined": RpclibPipelinedClient,
}


# --- profiling ----------------------------------------------------------------------------------


class Profiler:
    """yappi over every thread of the process (CPU clock), summarised as text."""

    def __init__(self) -> None:
        import yappi

        self._yappi = yappi
        yappi.set_clock_type("cpu")

    def start(self) -> None:
        self._yappi.clear_stats()
        self._yappi.start(builtins=True, profile_threads=True)

    def stop(self) -> None:
        self._yappi.stop()

    def report(self, label: str, per: int, top: int = 25) -> str:
        """Top functions by own and cumulative CPU time: µs per call and share of the total."""
        rows = list(self._yappi.get_func_stats())
        total = sum(s.tsub for s in rows) or 1e-9
        out = io.StringIO()
        print(
            f"== {label}: {total / per * 1e6:.0f} µs CPU per call under yappi "
            "(the profiler inflates absolute times; read the shares)",
            file=out,
        )
        layers: dict[str, float] = {}
        for st in rows:
            layer = _layer(st.module, st.name)
            layers[layer] = layers.get(layer, 0.0) + st.tsub
        print("-- own time by layer: µs/call, % of process CPU", file=out)
        for layer, value in sorted(layers.items(), key=lambda kv: kv[1], reverse=True):
            print(f"{value / per * 1e6:8.1f} {value / total * 100:5.1f}%  {layer}", file=out)
        for key, title in (("tsub", "own"), ("ttot", "cumulative")):
            print(f"-- top {top} by {title} time: µs/call, % of process CPU, calls/call", file=out)
            for s in sorted(rows, key=lambda s: getattr(s, key), reverse=True)[:top]:
                value = getattr(s, key)
                print(
                    f"{value / per * 1e6:8.1f} {value / total * 100:5.1f}% {s.ncall / per:6.1f}x"
                    f"  {s.name}  ({_short(s.module)}:{s.lineno})",
                    file=out,
                )
        return out.getvalue()


@dataclass
class ProfileLink:
    """Lets the client bracket the server's profile with its measured phase."""

    on: Event
    started: Event
    off: Event
    pipe: Connection  # server end: receives the call count, sends the report


LAYERS = (  # (path fragment, layer), first match wins
    ("/rpclib/transports/rabbit/", "rpclib rabbit driver"),
    ("/rpclib/", "rpclib core (client/server/envelope/serializer)"),
    ("/amqp/", "py-amqp (framing, socket reads/writes)"),
    ("/kombu/", "kombu"),
    ("msgpack", "msgpack"),
    ("/bench/", "bench harness"),
)


def _layer(module: str, name: str) -> str:
    """Which layer a profiled function belongs to (C functions by what they do)."""
    for fragment, layer in LAYERS:
        if fragment in module:
            return layer
    if module in ("builtins", "select", "_socket") or name.startswith("<"):
        if any(w in name for w in ("recv", "send", "select", "poll")):
            return "C: socket I/O and select"
        if any(w in name for w in ("acquire", "wait", "get' of '_queue", "put")):
            return "C: locks and queues"
        return "C: other builtins"
    return "Python stdlib (threading, queue, contextlib, ...)"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- the processes ------------------------------------------------------------------------------


def serve(
    system: str,
    url: str,
    topic: str,
    ready: Event,
    stop: Event,
    handled: Synchronized[int],
    profile: ProfileLink | None,
) -> None:
    """Server process entry point; with ``profile``, yappi runs while the client says so."""
    if profile is not None:
        profiler = Profiler()

        def watch() -> None:
            profile.on.wait()
            profiler.start()
            profile.started.set()
            profile.off.wait()
            profiler.stop()

        threading.Thread(target=watch, daemon=True).start()
    SERVERS[system](url, topic, ready, stop, handled)
    if profile is not None:
        calls = int(profile.pipe.recv())
        profile.pipe.send(profiler.report(f"{system} server", calls))


def drive(
    spec: Spec,
    pids: dict[str, int],
    handled: Synchronized[int],
    out: Connection,
    profile: ProfileLink | None,
) -> None:
    """Client process entry point: run the phases, send back a list of PhaseResult dicts."""
    try:
        results, profile_text = _run_phases(spec, pids, handled, profile)
        out.send(("ok", [asdict(r) for r in results], profile_text))
    except BaseException as exc:
        import traceback

        out.send(("error", traceback.format_exc(), repr(exc)))


def _run_phases(
    spec: Spec, pids: dict[str, int], handled: Synchronized[int], link: ProfileLink | None
) -> tuple[list[PhaseResult], str]:
    pids = {**pids, "client": os.getpid()}
    meter = CpuMeter(pids)
    client = CLIENTS[spec.system](spec)
    results: list[PhaseResult] = []
    profile = ""
    try:
        if spec.calls:
            call = client.caller()
            wc.warm_up_calls(call, PAYLOAD)
            with _profiled(link, f"{spec.system} client", spec.calls) as report:
                calls = wc.timed_calls(call, spec.calls, meter)
            profile = report[0] if report else profile
            results.append(calls)
        if spec.thread_calls:
            results.append(wc.threaded_calls(client, spec.thread_calls, spec.threads, meter))
        if spec.casts:
            cast_link = link if not spec.calls else None
            with _profiled(cast_link, f"{spec.system} client", spec.casts) as report:
                results.append(wc.timed_casts(client, spec.casts, meter, handled))
            profile = report[0] if report else profile
    finally:
        client.close()
    return results, profile


@contextlib.contextmanager
def _profiled(link: ProfileLink | None, label: str, per: int) -> Iterator[list[str]]:
    """Profile the block in this process and (via ``link``) in the server; report appended."""
    report: list[str] = []
    if link is None:
        yield report
        return
    profiler = Profiler()
    link.on.set()
    if not link.started.wait(10):
        raise RuntimeError("the server's profiler did not start")
    profiler.start()
    try:
        yield report
    finally:
        profiler.stop()
        link.off.set()
    report.append(profiler.report(label, per))
