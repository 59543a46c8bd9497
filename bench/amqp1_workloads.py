"""Server and client processes for ``bench/bench_amqp1.py``.

Three systems do the same work on one broker: plain proton (the baseline: a
Container server answering request/response by correlation id, blocking
clients, confirmed durable casts), rpclib over ``amqp1://`` and rpclib over
``rabbit://``. Calls are at-most-once requests with a reply; casts are
at-least-once (durable, each confirmed before the next). Queues of the
plain-proton system are declared by the harness over AMQP 0-9-1, as an
operator would, and addressed as ``/amq/queue/<name>``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import workloads_common as wc
from workloads_common import CALL_TIMEOUT, Counter, CpuMeter, PhaseResult, packb, unpackb

PAYLOAD: dict[str, Any] = {
    "uuid": "5d2f6c1e-8a4b-4f0e-9b1a-3c7d2e6f8a90",
    "name": "vm-0001",
    "host": "compute-017",
    "flavor": {"name": "m1.small", "vcpus": 2, "memory_mb": 2048, "root_gb": 20},
    "vm_state": "active",
    "metadata": {"env": "bench", "owner": "rpclib"},
}


@dataclass
class Spec:
    """What one client process runs (a count of 0 skips the phase)."""

    system: str  # "proton" or "rpclib"
    url: str  # amqp://... for proton (with vhost), else the rpclib transport URL
    vhost: str
    topic: str
    calls: int
    thread_calls: int
    threads: int
    casts: int


def declare_proton_queues(vhost: str, topic: str, replies: int) -> list[str]:
    """The baseline's queues (0-9-1): calls, durable casts, ``replies`` reply queues."""
    import amqp

    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host=vhost)
    conn.connect()
    ch = conn.channel()
    ch.queue_declare(f"{topic}.calls", durable=False, auto_delete=False)
    ch.queue_declare(f"{topic}.casts", durable=True, auto_delete=False)
    names = [f"{topic}.reply.{uuid.uuid4().hex[:8]}" for _ in range(replies)]
    for name in names:
        ch.queue_declare(name, durable=False, auto_delete=False)
    conn.close()
    return names


# --- plain proton ---------------------------------------------------------------------------


def proton_server(spec: Spec, ready: Event, stop: Event, handled: Synchronized[int]) -> None:
    from proton import Message
    from proton.handlers import MessagingHandler
    from proton.reactor import AtMostOnce, Container

    class Server(MessagingHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(prefetch=256, auto_accept=False)
            self.senders: dict[str, Any] = {}
            self.calls: Any = None

        def on_start(self, event: Any) -> None:
            conn = event.container.connect(
                spec.url, virtual_host=f"vhost:{spec.vhost}", allowed_mechs="PLAIN"
            )
            self.conn = conn
            self.calls = event.container.create_receiver(
                conn, f"/amq/queue/{spec.topic}.calls", options=AtMostOnce()
            )
            event.container.create_receiver(conn, f"/amq/queue/{spec.topic}.casts")
            event.container.schedule(0.05, self)

        def on_link_opened(self, event: Any) -> None:
            if event.receiver is not None and event.receiver == self.calls:
                ready.set()

        def on_timer_task(self, event: Any) -> None:
            if stop.is_set():
                self.conn.close()
            else:
                event.container.schedule(0.05, self)

        def on_message(self, event: Any) -> None:
            msg = event.message
            if event.receiver == self.calls:
                reply_to = msg.reply_to
                sender = self.senders.get(reply_to)
                if sender is None:
                    sender = event.container.create_sender(
                        self.conn, reply_to, options=AtMostOnce()
                    )
                    self.senders[reply_to] = sender
                body = packb({"result": unpackb(bytes(msg.body))["payload"]})
                sender.send(Message(body=body, correlation_id=msg.correlation_id))
                event.delivery.settle()
            else:
                unpackb(bytes(msg.body))
                handled.value += 1
                self.accept(event.delivery)

    Container(Server()).run()


class ProtonCaller:
    """One blocking connection with its own reply queue (BlockingConnection is one thread's)."""

    def __init__(self, spec: Spec, reply: str) -> None:
        from proton import Message
        from proton.reactor import AtMostOnce
        from proton.utils import BlockingConnection

        self._message = Message
        self.conn = BlockingConnection(
            spec.url, virtual_host=f"vhost:{spec.vhost}", allowed_mechs="PLAIN", timeout=30
        )
        calls = f"/amq/queue/{spec.topic}.calls"
        self.sender = self.conn.create_sender(calls, options=AtMostOnce())
        self.reply = f"/amq/queue/{reply}"
        self.receiver = self.conn.create_receiver(self.reply, credit=16, options=AtMostOnce())
        self.n = 0

    def __call__(self) -> Any:
        self.n += 1
        body = packb({"method": "echo", "payload": PAYLOAD})
        self.sender.send(self._message(body=body, reply_to=self.reply, correlation_id=self.n))
        while True:
            msg = self.receiver.receive(timeout=CALL_TIMEOUT)
            if msg.correlation_id == self.n:
                return unpackb(bytes(msg.body))["result"]

    def close(self) -> None:
        self.conn.close()


class ProtonClient:
    def __init__(self, spec: Spec) -> None:
        from proton import Message
        from proton.utils import BlockingConnection

        self.spec = spec
        self._message = Message
        self.replies = declare_proton_queues(spec.vhost, spec.topic, spec.threads + 1)
        self.callers: list[ProtonCaller] = []
        self.conn = BlockingConnection(
            spec.url, virtual_host=f"vhost:{spec.vhost}", allowed_mechs="PLAIN", timeout=30
        )
        self.caster = self.conn.create_sender(f"/amq/queue/{spec.topic}.casts")

    def caller(self) -> Callable[[], Any]:
        caller = ProtonCaller(self.spec, self.replies[len(self.callers)])
        self.callers.append(caller)
        return caller

    def cast(self) -> None:
        body = packb({"method": "note", "payload": PAYLOAD})
        self.caster.send(self._message(body=body, durable=True))  # waits for "accepted"

    def close(self) -> None:
        for caller in self.callers:
            caller.close()
        self.conn.close()


# --- rpclib -------------------------------------------------------------------------------------


def rpclib_server(spec: Spec, ready: Event, stop: Event, handled: Synchronized[int]) -> None:
    wc.run_rpclib_server(spec.url, spec.topic, wc.RpclibEndpoint(Counter(handled)), ready, stop)


class RpclibClient(wc.RpclibClient):
    def __init__(self, spec: Spec) -> None:
        super().__init__(spec.url, spec.topic, PAYLOAD)


SERVERS = {"proton": proton_server, "rpclib": rpclib_server}
CLIENTS: dict[str, Callable[[Spec], Any]] = {"proton": ProtonClient, "rpclib": RpclibClient}


# --- process entry points ----------------------------------------------------------------------


def serve(spec: Spec, ready: Event, stop: Event, handled: Synchronized[int]) -> None:
    if spec.system == "proton":
        declare_proton_queues(spec.vhost, spec.topic, 0)
    SERVERS[spec.system](spec, ready, stop, handled)


def drive(spec: Spec, pids: dict[str, int], handled: Synchronized[int], out: Connection) -> None:
    try:
        out.send(("ok", [asdict(r) for r in _phases(spec, pids, handled)]))
    except BaseException:
        import traceback

        out.send(("error", traceback.format_exc()))


def _phases(spec: Spec, pids: dict[str, int], handled: Synchronized[int]) -> list[PhaseResult]:
    meter = CpuMeter({**pids, "client": os.getpid()})
    client = CLIENTS[spec.system](spec)
    results = []
    try:
        if spec.calls:
            call = client.caller()
            wc.warm_up_calls(call, PAYLOAD)
            results.append(wc.timed_calls(call, spec.calls, meter))
        if spec.thread_calls:
            results.append(
                wc.threaded_calls(
                    client, spec.thread_calls, spec.threads, meter, clock_after_barrier=True
                )
            )
        if spec.casts:
            results.append(wc.timed_casts(client, spec.casts, meter, handled))
    finally:
        client.close()
    return results
