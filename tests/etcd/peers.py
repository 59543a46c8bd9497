"""Start etcd_peer.py processes from a test and read what they print."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


class Peer:
    """One etcd_peer.py process; stdout lines are read on a thread, stderr kept in a file."""

    def __init__(self, *args: str, log: Path) -> None:
        self.log = log
        self._stderr = open(log, "w")  # noqa: SIM115  (closed in stop())
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "etcd_peer.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.strip())
        self.lines.put("")  # EOF

    def expect(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first stdout line ``predicate`` accepts; fail with the stderr tail if none."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{what}: nothing after {timeout:.0f}s\n{self}")
            if line == "":
                pytest.fail(f"{what}: the process exited ({self.proc.poll()})\n{self}")
            if predicate(line):
                return line

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as in a crash."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """Close stdin (the stop signal), wait, kill if it will not go."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stderr.close()
        return code

    def __str__(self) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-30:]
        return f"--- stderr of {self.log.name}:\n" + "\n".join(text)


def read_records(path: Path) -> list[tuple[int, str, int]]:
    """(seq, message_id, attempts) per handled cast, from a ``serve`` peer's record file."""
    records = []
    for line in path.read_text().splitlines():
        seq, message_id, attempts = line.split()
        records.append((int(seq), message_id, int(attempts)))
    return records
