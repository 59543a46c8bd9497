"""A three-node RabbitMQ cluster loses the node both processes use (kill -9), mid-stream.

The serving process (``failover_peer.py``: an RPC server and a billing
notification listener) and this process (casters, a caller, a notifier) are
given URLs listing all three nodes, the same one first, and rpclib's
defaults otherwise (``queue_type=auto``: quorum queues, as the URL lists
several nodes). While 20,000 at-least-once casts, a stream of calls and
a stream of notifications run, that first node's Erlang VM is killed with
SIGKILL. Then:

- every cast is handled; a cast handled twice carries the same message id;
  no cast raised (the default ``retry=0``: the driver itself retries a
  broker's refusal during the election);
- a call that failed got a specific error within its deadline, and later
  calls succeed on the surviving nodes (so the reply path recovered);
- adverts recover: ``version_cap="auto"`` resolves for a new client on a
  surviving node, whose sync request the server answers from there;
- every notification reaches the billing pool.

The figures (recovery times, failed calls) are printed; run with ``-s``.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import rpclib
from tests.support.processes import PeerScript
from tests.support.rabbit_cluster import RabbitCluster

CASTS = 20_000
CASTERS = 4
KILL_AFTER = 5_000
"""Casts sent before the node is killed."""
NOTES = 1_500
NOTE_PACE = 0.005
CALL_TIMEOUT = 5.0
CALL_PACE = 0.02
CALLS_AFTER = 20
"""Successful calls wanted after the kill."""
SLACK = 2.0
"""Allowed beyond a call's deadline on a loaded machine."""
WAIT = 180.0


@dataclass
class Run:
    """What the streams saw; filled by their threads."""

    sent: int = 0
    cast_failures: list[tuple[int, str]] = field(default_factory=list)
    calls: list[tuple[float, float, BaseException | None]] = field(default_factory=list)
    """(start, end, error or None) per call, wall-clock times."""
    done: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def count_sent(self) -> None:
        with self.cond:
            self.sent += 1
            self.cond.notify_all()

    def wait_sent(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.sent >= count, timeout)


def read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def wait_complete(path: Path, count: int, timeout: float) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if len({int(line[0]) for line in lines}) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def describe_calls(calls: list[tuple[float, float, BaseException | None]], since: float) -> str:
    after = [error for start, _, error in calls if start > since]
    kinds = collections.Counter(type(error).__name__ for error in after)
    last = next((error for error in reversed(after) if error is not None), None)
    return f"{len(after)} calls since the kill: {dict(kinds)}; last error: {last!r}"


@pytest.mark.parametrize("pipelined", [False, True], ids=["casts", "pipelined-casts"])
def test_killing_the_node_both_processes_use_loses_nothing(
    rabbit_cluster: RabbitCluster,
    tmp_path: Path,
    peers: Callable[..., PeerScript],
    pipelined: bool,
) -> None:
    url = rabbit_cluster.url(0)
    doomed = rabbit_cluster.nodes[0]
    topic = f"failover-{uuid.uuid4().hex[:8]}"
    notify_topic = f"{topic}-notifications"
    casts_file, notes_file = tmp_path / "casts.txt", tmp_path / "notes.txt"
    casts_file.touch()
    notes_file.touch()
    server = peers("failover_peer.py", url, topic, notify_topic, str(casts_file), str(notes_file))
    server.expect(lambda line: line == "ready", 60, "server start")
    run = Run()
    with rpclib.get_transport(url) as transport, rpclib.get_transport(url) as notify_transport:
        target = rpclib.Target(topic=topic)
        caster = rpclib.RPCClient(transport, target, at_least_once=True, pipelined=pipelined)
        caller = rpclib.RPCClient(transport, target, timeout=CALL_TIMEOUT, version_cap="auto")
        assert caller.call({}, "echo", value=0) == 0
        assert caller.version_cap is not None, "no advert of the server before the kill"
        notifier = rpclib.Notifier(
            notify_transport, "compute.failover", topics=[notify_topic], ensure_pools=["billing"]
        )

        def cast(first: int) -> None:
            for seq in range(first, CASTS, CASTERS):
                try:
                    caster.cast({}, "record", seq=seq)
                except Exception as exc:
                    run.cast_failures.append((seq, repr(exc)))
                run.count_sent()

        def call() -> None:
            while not run.done.is_set():
                started = time.time()
                error: BaseException | None = None
                try:
                    assert caller.call({}, "echo", value=started) == started
                except rpclib.MessagingError as exc:
                    error = exc
                run.calls.append((started, time.time(), error))
                time.sleep(CALL_PACE)

        def notify() -> None:
            for n in range(NOTES):
                notifier.info({}, "instance.usage", {"n": n})
                time.sleep(NOTE_PACE)

        casters = [threading.Thread(target=cast, args=(i,)) for i in range(CASTERS)]
        others = [threading.Thread(target=call), threading.Thread(target=notify)]
        for thread in casters + others:
            thread.start()
        try:
            assert run.wait_sent(KILL_AFTER, WAIT), f"only {run.sent} casts sent"
            killed_at = time.time()
            rabbit_cluster.kill9(doomed)
            sent_at_kill = run.sent
            assert sent_at_kill < CASTS, "the kill came after the casts had all been sent"
            for thread in casters:
                thread.join(WAIT)
            if pipelined:
                try:
                    caster.flush(timeout=WAIT)
                except rpclib.TransportError as exc:
                    run.cast_failures.append((-1, repr(exc)))
            others[1].join(WAIT)
            deadline = time.monotonic() + WAIT
            while sum(1 for s, _, e in run.calls if s > killed_at and e is None) < CALLS_AFTER:
                assert time.monotonic() < deadline, (
                    f"calls did not recover: {describe_calls(run.calls, killed_at)}\n{server}"
                )
                time.sleep(0.1)
        finally:
            run.done.set()
            others[0].join(WAIT)
        assert all(not t.is_alive() for t in casters + others), "a stream hung"
        notifier.close(timeout=60)
        stats = notifier.stats

        # Adverts recovered: a new client on a surviving node resolves version_cap="auto".
        with rpclib.get_transport(rabbit_cluster.url(1)) as fresh:
            late = rpclib.RPCClient(fresh, target, timeout=CALL_TIMEOUT, version_cap="auto")
            assert late.version_cap is not None, "no advert answered after the kill"
            assert late.call({}, "echo", value="late") == "late"

    # -- casts: all handled, duplicates only under the same message id
    assert not run.cast_failures, f"{len(run.cast_failures)} casts raised: {run.cast_failures[:5]}"
    records = wait_complete(casts_file, CASTS, WAIT)
    by_seq: dict[int, set[str]] = collections.defaultdict(set)
    for seq, message_id, _, _ in records:
        by_seq[int(seq)].add(message_id)
    missing = sorted(set(range(CASTS)) - set(by_seq))
    assert not missing, f"{len(missing)} casts never handled, first {missing[:10]}\n{server}"
    ambiguous = {seq: ids for seq, ids in by_seq.items() if len(ids) > 1}
    assert not ambiguous, f"duplicates a receiver cannot tell by message id: {ambiguous}"

    # -- calls: failures are specific and within the deadline; later calls succeed
    failed = [(s, e, error) for s, e, error in run.calls if error is not None]
    late_calls = [(s, e, error) for s, e, error in failed if e - s > CALL_TIMEOUT + SLACK]
    assert not late_calls, f"calls failed after their deadline: {late_calls[:5]}"
    assert all(error is None for _, _, error in run.calls[-CALLS_AFTER:]), run.calls[-CALLS_AFTER:]

    # -- notifications: every one reached billing
    notes = wait_complete(notes_file, NOTES, WAIT)
    missing_notes = sorted(set(range(NOTES)) - {int(line[0]) for line in notes})
    assert not missing_notes, f"{len(missing_notes)} notifications lost: {missing_notes[:10]}"
    assert (stats.dropped, stats.failed) == (0, 0), stats

    # -- figures
    first_cast = min(float(t) for _, _, _, t in records if float(t) > killed_at)
    handled_at = sorted(float(t) for _, _, _, t in records)
    stall = max(b - a for a, b in itertools.pairwise(handled_at) if b > killed_at)
    first_call = min(e for s, e, error in run.calls if error is None and e > killed_at)
    kinds = collections.Counter(type(error).__name__ for _, _, error in failed)
    print(
        f"\nFIGURES pipelined={pipelined} sent={CASTS} handled={len(by_seq)} "
        f"deliveries={len(records)} "
        f"duplicates={len(records) - CASTS} cast_errors={len(run.cast_failures)} "
        f"sent_at_kill={sent_at_kill} "
        f"kill->first_cast_handled={first_cast - killed_at:.2f}s longest_cast_stall={stall:.2f}s "
        f"kill->first_call_ok={first_call - killed_at:.2f}s "
        f"calls={len(run.calls)} failed_calls={len(failed)} {dict(kinds)} "
        f"notes={NOTES} notes_delivered={len(notes)} "
        f"first_errors={[str(error)[:120] for _, _, error in failed[:3]]}"
    )
