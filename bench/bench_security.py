"""What authentication and authorization cost: calls and casts with them on and off.

Side by side in one run, interleaved rounds, on ``memory://`` (so the cost of
the mechanisms is not hidden behind a broker's): *off* (no accounts, no
policy), *accounts + policy* (the bus authenticates each driver and the server
checks a policy per request) and *signed + policy* (every message sealed with
Ed25519 and opened against a trust store; needs the ``signing`` extra).

``--transport etcd`` (section below): two private etcd
servers of this run, one without authentication, one with auth on and the
least-privilege roles of ``rpclib.access``: *off*, *signed + policy* (no
etcd auth) and *auth + signed + policy* (each driver an etcd user confined to
its keys: how etcd deployments get a verified sender).

``--transport rabbit`` does the same on the shared RabbitMQ broker, in a vhost
of the run's own: *off* (both ends log in as ``guest``, no policy) against
*accounts + policy* (each end has its own least-privilege account from
``rpclib.transports.rabbit.access.apply``; the server authorizes every request
by the broker-verified ``user_id``). rpclib stamps ``user_id`` on every
publish in both (it is not optional), so *off* measures the accounts and the
policy, not the stamp. Needs root (``rabbitmqctl``).

Run: ``bench/run security`` (or ``python bench/bench_security.py --transport memory|rabbit|etcd``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import rpclib
from rpclib.transports.memory import add_account, reset_bus

PAYLOAD = {"instance_uuid": str(uuid.uuid4()), "name": "vm-0001", "vcpus": 2, "tags": ["a", "b"]}
POLICY = rpclib.Policy(
    [rpclib.Allow("role:caller", namespace="*", methods=["echo", "note"])],
    roles={"caller": ["client-*"]},
)


class Endpoint:
    def __init__(self, expected: int) -> None:
        self.casts = 0
        self.expected = expected
        self.done = threading.Event()
        self._lock = threading.Lock()

    def echo(self, ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def note(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        with self._lock:
            self.casts += 1
            if self.casts == self.expected:
                self.done.set()


Pair = tuple[rpclib.Transport, rpclib.Transport, rpclib.Policy | None, Callable[[], None]]


def plain() -> Pair:
    bus = f"bench-{uuid.uuid4().hex}"
    server, client = (rpclib.get_transport(f"memory://{bus}") for _ in range(2))
    return server, client, None, lambda: reset_bus(bus)


def accounts() -> Pair:
    bus = f"bench-{uuid.uuid4().hex}"
    add_account(bus, "server", "s")
    add_account(bus, "client-1", "c")
    server = rpclib.get_transport(f"memory://server:s@{bus}")
    client = rpclib.get_transport(f"memory://client-1:c@{bus}")
    return server, client, POLICY, lambda: reset_bus(bus)


def signed() -> Pair:
    from rpclib.signing import Signing, SigningKey, TrustStore

    bus = f"bench-{uuid.uuid4().hex}"
    folder = tempfile.TemporaryDirectory()
    trust = TrustStore(directory=folder.name)
    keys = {name: SigningKey.generate(name) for name in ("server", "client-1")}
    for key in keys.values():
        trust.write(key)
    server = rpclib.get_transport(f"memory://{bus}", signing=Signing(keys["server"], trust))
    client = rpclib.get_transport(f"memory://{bus}", signing=Signing(keys["client-1"], trust))

    def cleanup() -> None:
        reset_bus(bus)
        folder.cleanup()

    return server, client, POLICY, cleanup


class RabbitSetup:
    """A vhost on the shared broker with a least-privilege account per end (rabbit://)."""

    PASSWORDS = {"server": uuid.uuid4().hex, "client-1": uuid.uuid4().hex}

    def __init__(self) -> None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from rabbit_broker import BROKER, Vhost, rabbitmqctl

        from rpclib.access import Access, Account
        from rpclib.transports.rabbit import access

        self.broker = BROKER
        self.vhost = Vhost("rpclib-bench-security-")
        self.rabbitmqctl = rabbitmqctl
        accounts = [
            Account(
                Access("server").serve(rpclib.Target(topic="b", server="s")),
                self.PASSWORDS["server"],
            ),
            Account(Access("client-1").call(rpclib.Target(topic="b")), self.PASSWORDS["client-1"]),
        ]
        access.apply(f"{self.vhost.url('rabbit')}", accounts)

    def url(self, user: str) -> str:
        password = "guest" if user == "guest" else self.PASSWORDS[user]
        return f"rabbit://{user}:{password}@{self.broker}/{self.vhost.name}"

    def guest(self) -> Pair:
        server, client = (rpclib.get_transport(self.url("guest")) for _ in range(2))
        return server, client, None, lambda: None

    def accounts(self) -> Pair:
        server = rpclib.get_transport(self.url("server"))
        client = rpclib.get_transport(self.url("client-1"))
        return server, client, POLICY, lambda: None

    def close(self) -> None:
        self.vhost.delete()
        for user in self.PASSWORDS:
            self.rabbitmqctl("delete_user", user)


def run(make: Callable[[], Pair], calls: int, casts: int) -> tuple[float, float]:
    server_t, client_t, policy, cleanup = make()
    endpoint = Endpoint(casts)
    server = rpclib.RPCServer(
        server_t, rpclib.Target(topic="b", server="s"), [endpoint], policy=policy
    )
    server.start()
    client = rpclib.RPCClient(client_t, rpclib.Target(topic="b"), timeout=30)
    client.call({}, "echo", payload=PAYLOAD)
    t0 = time.perf_counter()
    for _ in range(calls):
        client.call({}, "echo", payload=PAYLOAD)
    call_rate = calls / (time.perf_counter() - t0)
    caster = client.prepare(at_least_once=True)
    t0 = time.perf_counter()
    for _ in range(casts):
        caster.cast({}, "note", payload=PAYLOAD)
    if not endpoint.done.wait(120):
        raise SystemExit(f"only {endpoint.casts} of {casts} casts were handled")
    cast_rate = casts / (time.perf_counter() - t0)
    server.stop()
    server.wait()
    client_t.close()
    server_t.close()
    cleanup()
    return call_rate, cast_rate


# --- etcd:// ---------------------------------------------------------------------------


def _etcd_signed(url: str, server_url: str) -> Pair:
    """Server and client transports on etcd ``url``/``server_url``, signed, with the policy."""
    from rpclib.signing import Signing, SigningKey, TrustStore

    keys = {name: SigningKey.generate(name) for name in ("server", "client-1")}
    trust = TrustStore({name: [key.public_key] for name, key in keys.items()})
    server = rpclib.get_transport(server_url, signing=Signing(keys["server"], trust))
    client = rpclib.get_transport(url, signing=Signing(keys["client-1"], trust))
    return server, client, POLICY, lambda: None


def etcd_targets() -> tuple[dict[str, Callable[[], Pair]], Callable[[], None]]:
    """The etcd variants, each making a fresh pair; and how to stop both etcd servers."""
    from bench_etcd import PrivateEtcd

    from rpclib.access import Access, Account, provision

    plain_etcd, auth_etcd = PrivateEtcd(), PrivateEtcd()
    auth_etcd.request("auth/user/add", {"name": "root", "password": "root-pw"})
    auth_etcd.request("auth/role/add", {"name": "root"})
    auth_etcd.request("auth/user/grant", {"user": "root", "role": "root"})
    auth_etcd.request("auth/enable", {})
    accesses = [
        Account(Access("server").serve(rpclib.Target(topic="b", server="s")), "server-pw"),
        Account(Access("client-1").call(rpclib.Target(topic="b")), "client-pw"),
    ]
    provision(f"etcd://root:root-pw@{auth_etcd.endpoint}/bench", accesses)

    def off() -> Pair:
        prefix = f"b{uuid.uuid4().hex[:8]}"
        url = f"etcd://{plain_etcd.endpoint}/{prefix}"
        server, client = (rpclib.get_transport(url) for _ in range(2))
        return server, client, None, lambda: None

    def signed_only() -> Pair:
        url = f"etcd://{plain_etcd.endpoint}/b{uuid.uuid4().hex[:8]}"
        return _etcd_signed(url, url)

    def auth_signed() -> Pair:
        # one deployment prefix (the roles are granted on it); queues drain every round
        return _etcd_signed(
            f"etcd://client-1:client-pw@{auth_etcd.endpoint}/bench",
            f"etcd://server:server-pw@{auth_etcd.endpoint}/bench",
        )

    def stop() -> None:
        plain_etcd.stop()
        auth_etcd.stop()

    variants = {
        "off": off,
        "signed + policy": signed_only,
        "auth + signed + policy": auth_signed,
    }
    return variants, stop


def bench_etcd(rounds: int, calls: int, casts: int) -> None:
    """etcd://: the variants of :func:`etcd_targets`, interleaved, medians and ratios."""
    variants, stop = etcd_targets()
    try:
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, make in variants.items():
                rates[name].append(run(make, calls, casts))
    finally:
        stop()
    report(f"etcd:// (at-most-once calls, at-least-once casts), {rounds} rounds", rates)


def report(title: str, rates: dict[str, list[tuple[float, float]]]) -> None:
    """Print medians of calls/s and casts/s per variant, with ratios to the first ('off')."""
    med = statistics.median
    base = next(iter(rates.values()))
    off_calls, off_casts = med(r[0] for r in base), med(r[1] for r in base)
    print(f"{title}, medians (ratio: of 'off')")
    print(f"{'':24}{'calls/s':>10}{'ratio':>7}{'casts/s':>10}{'ratio':>7}")
    for name, samples in rates.items():
        c, k = med(r[0] for r in samples), med(r[1] for r in samples)
        print(f"{name:24}{c:10.0f}{c / off_calls:7.2f}{k:10.0f}{k / off_casts:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--casts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--etcd-calls", type=int, default=500)
    parser.add_argument("--etcd-casts", type=int, default=1000)
    parser.add_argument("--transport", choices=("memory", "rabbit", "etcd"), default="memory")
    args = parser.parse_args()
    if args.transport == "etcd":
        bench_etcd(args.rounds, args.etcd_calls, args.etcd_casts)
        return
    setup: RabbitSetup | None = None
    variants: dict[str, Callable[[], Pair]]
    if args.transport == "rabbit":
        setup = RabbitSetup()
        variants = {"off (guest)": setup.guest, "accounts + policy": setup.accounts}
    else:
        variants = {"off": plain, "accounts + policy": accounts, "signed + policy": signed}
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        for i in range(args.rounds):  # interleaved, so machine noise hits each alike
            order = list(variants.items())
            for name, make in order if i % 2 == 0 else reversed(order):  # and no order bias
                rates[name].append(run(make, args.calls, args.casts))
    finally:
        if setup is not None:
            setup.close()
    med = statistics.median
    off = next(iter(rates.values()))
    off_calls = med(r[0] for r in off)
    off_casts = med(r[1] for r in off)
    print(f"{args.transport}://, {args.rounds} interleaved rounds, medians (ratio: of 'off')")
    print(f"{'':22}{'calls/s':>10}{'ratio':>7}{'casts/s':>10}{'ratio':>7}")
    for name, samples in rates.items():
        c, k = med(r[0] for r in samples), med(r[1] for r in samples)
        print(f"{name:22}{c:10.0f}{c / off_calls:7.2f}{k:10.0f}{k / off_casts:7.2f}")


if __name__ == "__main__":
    main()
