"""Peer scripts of this folder, run as processes of their own, for the process tests here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import PeerScript

HERE = Path(__file__).parent


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Callable[..., PeerScript]]:
    """Start a peer script of this folder; every one is stopped after the test."""
    started: list[PeerScript] = []

    def start(script: str, *args: str) -> PeerScript:
        log = tmp_path / f"{script}.{len(started)}.err"
        started.append(p := PeerScript(HERE / script, *args, log=log))
        return p

    yield start
    for p in started:
        p.stop()
