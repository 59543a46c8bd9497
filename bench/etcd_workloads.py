"""The processes of bench_etcd: a server and a client per system, on a private etcd.

``plain`` is etcd3gw alone, the floor: a call is a put of a request key that
the server's watch sees and answers with a put of a reply key the client's
watch sees; casts are a burst of puts consumed by the server's watch.
``plain-lean`` is the same over the HTTP session rpclib's driver uses. The
``rpclib`` system does the same work through RPCClient/RPCServer over
``etcd://``: at-most-once calls to a topic; casts both at-most-once (pushed
to the server's box) and at-least-once (stored, claimed by transaction, acked).
"""

from __future__ import annotations

import multiprocessing.synchronize
import threading
import time
import traceback
import uuid
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from workloads_common import Counter, RpclibEndpoint, run_rpclib_server, wait_handled

PAYLOAD = {
    "instance_uuid": "6a0d1c5e-8d8e-4d0e-9f51-2b0d5c6f1a10",
    "name": "vm-0001",
    "vcpus": 2,
    "memory_mb": 2048,
    "flavor": "m1.small",
    "image": "cirros-0.6.2",
    "tags": ["a", "b"],
    "meta": {"k": "v"},
}


def plain_clients(endpoint: str, lean: bool) -> tuple[Any, Any]:
    """etcd3gw clients (for requests, for watches) of the plain system.

    ``plain``: etcd3gw as it comes (requests; proxy lookups off, as in the
    driver). ``plain-lean``: requests go over the driver's lean keep-alive
    session instead, the same HTTP layer rpclib uses, so the two floors
    separate what the HTTP layer costs from what rpclib costs.
    """
    import etcd3gw
    import requests

    from rpclib.transports.etcd.lean_http import LeanSession

    session = requests.Session()
    session.trust_env = False
    host, port = endpoint.split(":")
    watcher = etcd3gw.client(host=host, port=int(port), session=session, api_path="/v3/")
    if not lean:
        return watcher, watcher
    lean_session: Any = LeanSession()  # only post() is used with api_path given
    return etcd3gw.client(host=host, port=int(port), session=lean_session, api_path="/v3/"), watcher


def serve(
    system: str,
    endpoint: str,
    prefix: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    handled: Synchronized[int],
) -> None:
    # The counter of both servers takes the shared value's own lock.
    counter = Counter(handled, handled.get_lock())
    if system == "rpclib":
        url = f"etcd://{endpoint}/{prefix}"
        run_rpclib_server(url, "bench", RpclibEndpoint(counter), ready, stop)
        return

    client, watcher = plain_clients(endpoint, system == "plain-lean")
    events, cancel = watcher.watch_prefix(f"/{prefix}/req/")
    ready.set()

    def answer() -> None:
        for event in events:
            if event.get("type") == "DELETE":
                continue
            key = event["kv"]["key"].decode()
            if key.startswith(f"/{prefix}/req/call/"):
                client.put(f"/{prefix}/rep/{key.rpartition('/')[2]}", event["kv"]["value"])
            else:
                counter.bump()

    threading.Thread(target=answer, daemon=True).start()
    stop.wait()
    cancel()


def drive(
    system: str,
    endpoint: str,
    prefix: str,
    calls: int,
    casts: int,
    handled: Synchronized[int],
    results: Connection,
) -> None:
    try:
        if system == "rpclib":
            out = _drive_rpclib(endpoint, prefix, calls, casts, handled)
        else:
            out = _drive_plain(endpoint, prefix, calls, casts, handled, system == "plain-lean")
        results.send(("ok", out))
    except BaseException:
        results.send(("error", traceback.format_exc()))


def _wait_for(handled: Synchronized[int], count: int) -> None:
    wait_handled(handled, count, timeout=300, poll=0.0005)


def _drive_rpclib(
    endpoint: str, prefix: str, calls: int, casts: int, handled: Synchronized[int]
) -> dict[str, Any]:
    import rpclib

    with rpclib.get_transport(f"etcd://{endpoint}/{prefix}") as transport:
        client = rpclib.RPCClient(transport, rpclib.Target(topic="bench"), timeout=30)
        for _ in range(20):  # warm up: routes cached, inbox open
            client.call({}, "echo", payload=PAYLOAD)
        latencies = []
        t0 = time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            client.call({"request_id": "req-1"}, "echo", payload=PAYLOAD)
            latencies.append(time.perf_counter() - t)
        call_time = time.perf_counter() - t0
        out: dict[str, Any] = {"calls": call_time, "latencies": latencies}
        for name, at_least_once in (("casts", False), ("stored_casts", True)):
            caster = rpclib.RPCClient(
                transport, rpclib.Target(topic="bench"), at_least_once=at_least_once
            )
            base = handled.value
            t0 = time.perf_counter()
            for _ in range(casts):
                caster.cast({"request_id": "req-1"}, "note", payload=PAYLOAD)
            out[f"{name} sent"] = time.perf_counter() - t0
            _wait_for(handled, base + casts)
            out[name] = time.perf_counter() - t0
    return out


def _drive_plain(
    endpoint: str, prefix: str, calls: int, casts: int, handled: Synchronized[int], lean: bool
) -> dict[str, Any]:
    import queue

    import rpclib

    client, watcher = plain_clients(endpoint, lean)
    data = rpclib.Serializer().dumps(PAYLOAD)
    events, cancel = watcher.watch_prefix(f"/{prefix}/rep/")
    replies: queue.Queue[bytes] = queue.Queue()

    def collect() -> None:
        for event in events:
            replies.put(event["kv"]["value"])

    threading.Thread(target=collect, daemon=True).start()
    time.sleep(0.2)  # the watch is created asynchronously by etcd3gw
    for _ in range(20):
        client.put(f"/{prefix}/req/call/{uuid.uuid4().hex}", data)
        replies.get(timeout=30)
    latencies = []
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        client.put(f"/{prefix}/req/call/{uuid.uuid4().hex}", data)
        replies.get(timeout=30)
        latencies.append(time.perf_counter() - t)
    call_time = time.perf_counter() - t0
    base = handled.value
    t0 = time.perf_counter()
    for i in range(casts):
        client.put(f"/{prefix}/req/cast/{i}", data)
    sent = time.perf_counter() - t0
    _wait_for(handled, base + casts)
    cast_time = time.perf_counter() - t0
    cancel()
    client.delete_prefix(f"/{prefix}/")
    return {
        "calls": call_time,
        "latencies": latencies,
        "casts": cast_time,
        "casts sent": sent,
        "stored_casts": cast_time,  # the plain client has one kind of cast: the put burst
        "stored_casts sent": sent,
    }
