"""Helpers for the conductor database tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from services.conductor.db import DISK_GB, MEMORY_MB, VCPU, Inventory

T = TypeVar("T")
R = TypeVar("R")

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class FakeClock:
    """Aware UTC time that moves 1 ms per reading, or as far as ``advance`` says."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(milliseconds=1)
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


def host_inventories(
    vcpus: int = 8, memory_mb: int = 8192, disk_gb: int = 100, **vcpu_options: float
) -> dict[str, Inventory]:
    """A compute host's inventories (``vcpu_options`` tune the VCPU one)."""
    return {
        VCPU: Inventory(vcpus, **vcpu_options),  # type: ignore[arg-type]
        MEMORY_MB: Inventory(memory_mb),
        DISK_GB: Inventory(disk_gb),
    }


def race(fn: Callable[[T], R], items: Sequence[T]) -> list[R | Exception]:
    """Run ``fn`` on every item in its own thread, all released at once; results in order."""
    results: list[R | Exception] = [RuntimeError("did not run")] * len(items)
    start = threading.Barrier(len(items))

    def run(index: int, item: T) -> None:
        start.wait()
        try:
            results[index] = fn(item)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(items)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results
