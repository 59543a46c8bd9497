"""Processes for tests: :mod:`tests.support.worker` workers and peer scripts.

A *peer script* prints progress lines on stdout, stops when its stdin closes
and keeps its stderr in a log file that failures quote (:class:`PeerScript`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


class WorkerProcess:
    """One worker process; use as a context manager or call start()/stop()."""

    def __init__(self, tmp: Path, url: str, *, name: str, **options: str) -> None:
        self.name = name
        self.out = tmp / f"{name}-{time.monotonic_ns()}.jsonl"
        self.out.touch()
        self.args = [
            sys.executable,
            "-m",
            "tests.support.worker",
            "--url",
            url,
            "--out",
            str(self.out),
            "--server",
            name,
        ]
        for key, value in options.items():
            self.args += [f"--{key.replace('_', '-')}", value]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> WorkerProcess:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.strip() == "READY" or not line:
                break
        if line.strip() != "READY":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"worker {self.name} did not start:\n{err[-4000:]}")
        return self

    def stop(self) -> None:
        """Graceful stop (close stdin), escalating to kill; the process's pid only."""
        if self.proc is None or self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PeerScript:
    """A peer script's process; stdout lines are read on a thread, stderr kept in ``log``."""

    def __init__(self, script: Path, *args: str, log: Path) -> None:
        self.log = log
        self._stderr = open(log, "w")  # noqa: SIM115  (closed in stop())
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.last = ""
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
                pytest.fail(f"{what}: nothing after {timeout:.0f}s (last {self.last!r})\n{self}")
            if line == "":
                pytest.fail(f"{what}: the process exited ({self.proc.poll()})\n{self}")
            self.last = line
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
    """(seq, message_id, attempts) per handled cast, from a peer server's record file."""
    records = []
    for line in path.read_text().splitlines():
        seq, message_id, attempts = line.split()
        records.append((int(seq), message_id, int(attempts)))
    return records
