"""The main job (scripts/run -> services.allinone) removes the state folder it made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(tmp: Path) -> subprocess.Popen[str]:
    env = os.environ | {"TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    env.pop("RPCLIB_TRANSPORT_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "services.allinone"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_finished_run_leaves_no_state_folder(tmp_path: Path) -> None:
    proc = start(tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "== usage" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_no_state_folder(tmp_path: Path, sig: signal.Signals) -> None:
    proc = start(tmp_path)
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if "== booting instances" in line:
            break
    assert "== booting instances" in seen, seen
    assert [p.name[:13] for p in tmp_path.iterdir()] == ["rpclib-cloud-"]
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []
