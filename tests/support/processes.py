"""Start and stop :mod:`tests.support.worker` processes from a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

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
