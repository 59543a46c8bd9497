"""Each service runs as a process, says it is running, and stops cleanly on SIGTERM.

They run on RabbitMQ: a service process refuses ``memory://``, which no
other process could reach (tests/services/test_cli_errors.py). Compute is
not here: it waits for a conductor to register with, so its process is
covered by the RabbitMQ tests that start the whole cloud as processes
(tests/rabbit/test_cloud_processes.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("services.conductor.service", ["--state-dir", "{state}"]),
        ("services.scheduler.service", []),
        ("services.billing.service", ["--state-dir", "{state}"]),
    ],
)
def test_service_starts_and_stops_on_sigterm(
    module: str, extra: list[str], tmp_path: Path, rabbit_url: str
) -> None:
    args = [a.format(state=tmp_path) for a in extra]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--transport-url",
            rabbit_url,  # a lone service process refuses an in-process bus
            "--host",
            "h1",
            "--log-level",
            "INFO",
            *args,
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "running; stop with SIGTERM" in line or not line:
            break
    assert "running; stop with SIGTERM" in seen, seen
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 0
