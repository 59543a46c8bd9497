"""The objects benchmark explains how to run it when oslo.versionedobjects is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_objects.py"


@pytest.mark.skipif(
    importlib.util.find_spec("oslo_versionedobjects") is not None,
    reason="oslo.versionedobjects is installed here",
)
def test_bench_without_oslo_exits_pointing_at_the_bench_environment() -> None:
    result = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "oslo.versionedobjects" in result.stderr
    assert "bench/run" in result.stderr
