"""Conductors on different databases never share a bus (issue 13, item 6).

Each database has an identity; a conductor asks the live conductors on the
bus for theirs before it serves, and refuses to start on a mismatch.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rpclib
from services.conductor.service import ConductorService, DatabaseConflict

ROOT = Path(__file__).resolve().parents[2]
Start = Callable[[rpclib.Transport, str, Path], ConductorService]


@pytest.fixture
def start_conductor() -> Iterator[Start]:
    started: list[ConductorService] = []

    def start(transport: rpclib.Transport, host: str, state: Path) -> ConductorService:
        conductor = ConductorService(transport, host=host, state_dir=state, authorization=False)
        started.append(conductor)
        conductor.start()
        return conductor

    yield start
    for conductor in started:
        conductor.stop()


def test_a_second_conductor_on_another_database_refuses_to_start(
    make_transport: Callable[[], rpclib.Transport], tmp_path: Path, start_conductor: Start
) -> None:
    start_conductor(make_transport(), "c1", tmp_path / "a")
    with pytest.raises(DatabaseConflict) as refused:
        start_conductor(make_transport(), "c2", tmp_path / "b")
    message = str(refused.value)
    assert "conductor c2 uses database" in message and "b/conductor.sqlite" in message
    assert "conductor c1 on this bus uses another one" in message


def test_a_second_conductor_on_the_same_database_joins(
    make_transport: Callable[[], rpclib.Transport], tmp_path: Path, start_conductor: Start
) -> None:
    first = start_conductor(make_transport(), "c1", tmp_path / "a")
    second = start_conductor(make_transport(), "c2", tmp_path / "a")
    assert first.db is not None and second.db is not None
    assert first.db.database_id() == second.db.database_id()


def test_the_conductor_process_refuses_with_one_error_line(
    fresh_rabbit_url: str, tmp_path: Path
) -> None:
    transport = rpclib.get_transport(fresh_rabbit_url)
    first = ConductorService(transport, host="c1", state_dir=tmp_path / "a", authorization=False)
    try:
        first.start()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.conductor.service",
                *("--transport-url", fresh_rabbit_url, "--host", "c2"),
                *("--state-dir", str(tmp_path / "b"), "--authorization", "false"),
                *("--log-level", "ERROR"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.stop()
        transport.close()
    assert done.returncode == 1
    assert done.stderr.startswith("rpclib-conductor: error: conductor c2 uses database")
    assert done.stderr.count("\n") == 1, done.stderr
