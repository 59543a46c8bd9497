"""The library's own story (examples/story.py) keeps working as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_story_runs_an_upgrade_and_a_backport() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.story"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "client cap (auto): 1.2" in out and "client cap (auto): 1.3" in out
    assert "Flavor@1.0" in out  # backported for the old servers
    assert "UnsupportedVersion" in out
    assert out.count("instance.create.end") == 5


def test_the_readme_runs_the_story_with_scripts_story() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "`scripts/story`" in readme
    result = subprocess.run(
        [str(ROOT / "scripts" / "story")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "client cap (auto): 1.3" in result.stdout
