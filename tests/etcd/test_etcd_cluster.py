"""A three-member etcd cluster loses its leader in the middle of casts and calls.

The URL lists all three members, the leader first, so every connection of
both processes starts on the member that is then killed with SIGKILL. An RPC
server runs in the test process; a peer process sends at-least-once casts
with rpclib's defaults (``retry=0``: a send the driver gives up on ends the
peer); a thread of the test process makes calls with a 5 s timeout all along.
The figures (sent, handled, duplicates, recovery times, failed calls) are
printed (``pytest -s``) and the behaviour asserted: nothing lost, duplicates
only under the same message id, watches (the queue's, the box's, the adverts')
resumed on another member, calls failing only within their deadline and
working again after.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import rpclib
from services.allinone import wait_until
from tests.etcd.peers import Peer
from tests.support.etcd import check_generation, generation_binary
from tests.support.etcd_cluster import EtcdCluster, running_cluster

CASTS = 2000
KILL_AFTER = 500
CALL_TIMEOUT = 5.0
DEADLINE_SLACK = 2.0
"""How far past its timeout a failed call may end (scheduling on a busy machine; the
unbounded send took 7 s more)."""
WAIT = 120.0


@pytest.fixture(params=["3.5", "3.4"])
def cluster(request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    with running_cluster(generation_binary(request.param)) as started:
        check_generation(started.members[0], request.param)
        yield started


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(*args: str) -> Peer:
        started.append(p := Peer(*args, log=tmp_path / f"peer{len(started)}.err"))
        return p

    yield start
    for p in started:
        p.stop()


class Recorder:
    """The server's endpoint: ``record`` notes each cast with when it was handled."""

    def __init__(self) -> None:
        self.handled: list[tuple[int, str, float]] = []
        self._lock = threading.Lock()

    def record(self, ctx: dict[str, Any], seq: int) -> None:
        request = rpclib.current_request()
        assert request is not None
        with self._lock:
            self.handled.append((seq, request.message_id, time.monotonic()))

    def ping(self, ctx: dict[str, Any]) -> str:
        return "pong"


@dataclass
class CallResult:
    started: float
    ended: float
    error: BaseException | None


class Caller:
    """Calls ``ping`` back to back on a thread until stopped."""

    def __init__(self, client: rpclib.RPCClient) -> None:
        self.client = client
        self.results: list[CallResult] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.client.call({}, "ping")
                error = None
            except rpclib.MessagingError as exc:
                error = exc
            self.results.append(CallResult(started, time.monotonic(), error))
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT + 30)


def test_casts_and_calls_survive_the_loss_of_the_leader(
    cluster: EtcdCluster, peers: Callable[..., Peer]
) -> None:
    leader = cluster.leader()
    url = cluster.url(first=leader)
    topic = f"ha-{uuid.uuid4().hex[:8]}"
    recorder = Recorder()
    adverts: list[float] = []
    with rpclib.get_transport(url) as server_side, rpclib.get_transport(url) as client_side:
        server = rpclib.RPCServer(
            server_side, rpclib.Target(topic=topic, server="peer"), [recorder], advert_interval=1
        )
        server.start()
        watch = client_side.driver.watch_adverts(
            server.address.exchange, topic, lambda *_: adverts.append(time.monotonic())
        )
        caller = Caller(
            rpclib.RPCClient(client_side, rpclib.Target(topic=topic), timeout=CALL_TIMEOUT)
        )
        try:
            wait_until(lambda: any(r.error is None for r in caller.results), WAIT, "a first call")
            caster = peers("cast", url, topic, str(CASTS), "default")
            caster.expect(lambda line: line == f"sent {KILL_AFTER}", WAIT, "casts before the kill")

            leader.kill()
            killed = time.monotonic()

            caster.expect(lambda line: line == "done", WAIT, "the rest of the casts")
            assert caster.stop() == 0, str(caster)
            wait_until(lambda: len({r[0] for r in recorder.handled}) >= CASTS, WAIT, "all casts")
            wait_until(
                lambda: any(r.started > killed and r.error is None for r in caller.results),
                WAIT,
                "a call after the kill",
            )
            wait_until(lambda: any(t > killed for t in adverts), WAIT, "an advert after the kill")
        finally:
            caller.stop()
            watch.cancel()
            server.stop()
            server.wait()

    handled = recorder.handled
    seqs = sorted(seq for seq, _, _ in handled)
    ids_by_seq: dict[int, set[str]] = {}
    for seq, message_id, _ in handled:
        ids_by_seq.setdefault(seq, set()).add(message_id)
    after_kill = [t for _, _, t in handled if t > killed]
    times = sorted(t for _, _, t in handled)
    failed = [r for r in caller.results if r.error is not None]
    first_call = min(r.ended for r in caller.results if r.started > killed and r.error is None)
    print(
        f"\netcd {cluster.members[0].version()} leader kill: sent {CASTS}, "
        f"handled {len(set(seqs))} ({len(seqs)} handlings, {len(seqs) - len(set(seqs))} "
        f"duplicates); kill -> first cast handled {min(after_kill) - killed:.2f}s, "
        f"longest pause in handling {max(b - a for a, b in itertools.pairwise(times)):.2f}s; "
        f"kill -> first call answered {first_call - killed:.2f}s; "
        f"kill -> first advert {min(t for t in adverts if t > killed) - killed:.2f}s; "
        f"calls {len(caller.results)}, failed {len(failed)}: "
        + "; ".join(
            f"{type(r.error).__name__} after {r.ended - r.started:.2f}s ({r.error})" for r in failed
        )
    )
    assert sorted(set(seqs)) == list(range(CASTS)), "casts were lost"
    assert all(len(ids) == 1 for ids in ids_by_seq.values()), "a duplicate with a new id"
    late = [r for r in failed if r.ended - r.started > CALL_TIMEOUT + DEADLINE_SLACK]
    assert not late, f"calls failed past their {CALL_TIMEOUT:g}s deadline: {late}"
