"""The objects benchmark explains how to run it when oslo.versionedobjects is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_objects.py"


def test_bench_without_oslo_exits_pointing_at_the_bench_environment(tmp_path: Path) -> None:
    # shadow any installed copy with one that cannot be imported
    (tmp_path / "oslo_versionedobjects").mkdir()
    (tmp_path / "oslo_versionedobjects" / "__init__.py").write_text(
        "raise ImportError('not in this environment')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(BENCH.parents[1])]))
    result = subprocess.run(
        [sys.executable, str(BENCH)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0
    assert "oslo.versionedobjects" in result.stderr
    assert "bench/run" in result.stderr
