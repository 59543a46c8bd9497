"""Wait until a server or listener has handled what a block of code sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Protocol

from rpclib.consumer import Counters

_POLL = 0.005


class _Counted(Protocol):
    @property
    def stats(self) -> Counters: ...


def _counts(consumer: _Counted) -> dict[str, int]:
    stats = consumer.stats
    counts = {f.name: getattr(stats, f.name) for f in fields(stats)}
    return {name: value for name, value in counts.items() if type(value) is int}


@contextmanager
def handled(consumer: _Counted, count: int = 1, *, timeout: float = 10.0) -> Iterator[None]:
    """On leaving the block, wait until ``consumer`` has handled ``count`` more messages.

    ``consumer`` is an :class:`rpclib.RPCServer`, a notification listener or
    a :class:`~rpclib.testing.StubServer` (anything with ``stats.handled``)::

        with handled(server):
            client.cast(ctx, "reboot", name="vm1")
        assert ...  # the cast has run

    If that does not happen within ``timeout`` seconds, raises
    AssertionError saying what the consumer did instead (failed, refused,
    dead-lettered...). The block's own exception passes through unchanged.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    target: _Counted = getattr(consumer, "server", consumer)
    before = _counts(target)
    yield
    deadline = time.monotonic() + timeout
    while _counts(target)["handled"] - before["handled"] < count:
        if time.monotonic() > deadline:
            now = _counts(target)
            moved = {k: now[k] - before[k] for k in now if now[k] != before[k]}
            raise AssertionError(
                f"{type(target).__name__} handled {moved.get('handled', 0)} of {count} "
                f"message(s) within {timeout:g}s; its counters moved by {moved or 'nothing'}"
            )
        time.sleep(_POLL)
