"""``scripts/run --transport-url etcd://...`` runs the cloud with authorization on: each
service process logs in with its own account and signs with its own key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import allinone


def test_the_main_job_on_etcd_signs_and_authorizes(
    etcd_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert allinone.main(["--transport-url", etcd_url, "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "one account per service, each signing with its own key" in out
    assert "authorization OFF" not in out
    assert "== usage (from billing's ledger)" in out
    keys = sorted(p.name for p in (tmp_path / "keys").glob("*.key"))
    assert keys == sorted(f"{a.principal}.key" for a in allinone.HOSTS.accesses())
