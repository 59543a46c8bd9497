"""``rpclib-cloud accounts`` on etcd:// also makes each principal's signing key and the trust
directory, and writes login URLs that sign with them; keys are kept across runs like
passwords, rotated one principal at a time, and old ones retired. rabbit:// gets none."""

from __future__ import annotations

from pathlib import Path

import pytest

import rpclib
from rpclib.signing import SigningKey, TrustStore
from rpclib.transports.url import parse_url
from services.cli import main

HOSTS = ["--conductor", "c1", "--scheduler", "s1", "--billing", "b1", "--compute", "n1"]
PRINCIPALS = ["admin", "billing-b1", "compute-n1", "conductor-c1", "scheduler-s1"]


def accounts(url: str, secrets: Path, *extra: str) -> int:
    return main(["--transport-url", url, "accounts", "--secrets", str(secrets), *HOSTS, *extra])


def key_id(secrets: Path, principal: str) -> str:
    return SigningKey.from_file(principal, secrets / f"{principal}.key").key_id


def trusted(secrets: Path) -> list[str]:
    return sorted(p.name for p in (secrets / "trust").glob("*.pub"))


def test_each_principal_gets_its_own_key_and_a_url_that_signs_with_it(
    etcd_url: str, tmp_path: Path
) -> None:
    secrets = tmp_path / "s"
    assert accounts(etcd_url, secrets) == 0
    trust = TrustStore(directory=secrets / "trust")
    for principal in PRINCIPALS:
        key = secrets / f"{principal}.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert trust.trusted_as(key_id(secrets, principal)) == {principal}
        url = parse_url((secrets / f"{principal}.url").read_text().strip())
        assert url.options["signing_key"] == str(key)
        assert url.options["signing_trust"] == str(secrets / "trust")
    assert len(trusted(secrets)) == len(PRINCIPALS)
    transport = rpclib.get_transport((secrets / "compute-n1.url").read_text().strip())
    try:
        assert "compute-n1" in repr(transport.driver)  # <SigningDriver as 'compute-n1' ...>
    finally:
        transport.close()


def test_running_it_again_keeps_every_key(etcd_url: str, tmp_path: Path) -> None:
    secrets = tmp_path / "s"
    accounts(etcd_url, secrets)
    first = {p: key_id(secrets, p) for p in PRINCIPALS}
    assert accounts(etcd_url, secrets) == 0
    assert {p: key_id(secrets, p) for p in PRINCIPALS} == first
    assert len(trusted(secrets)) == len(PRINCIPALS)


def test_a_rotated_key_is_trusted_beside_the_old_one_until_retired(
    etcd_url: str, tmp_path: Path
) -> None:
    secrets = tmp_path / "s"
    accounts(etcd_url, secrets)
    old = key_id(secrets, "compute-n1")
    others = {p: key_id(secrets, p) for p in PRINCIPALS if p != "compute-n1"}
    assert accounts(etcd_url, secrets, "--rotate-key", "compute-n1") == 0
    new = key_id(secrets, "compute-n1")
    assert new != old
    assert {p: key_id(secrets, p) for p in others} == others
    assert {f"compute-n1.{old}.pub", f"compute-n1.{new}.pub"} <= set(trusted(secrets))
    assert accounts(etcd_url, secrets, "--retire-old-keys") == 0
    assert f"compute-n1.{old}.pub" not in trusted(secrets)
    assert f"compute-n1.{new}.pub" in trusted(secrets)
    assert len(trusted(secrets)) == len(PRINCIPALS)


def test_rotating_an_unknown_principals_key_is_one_error_line(
    etcd_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert accounts(etcd_url, tmp_path / "s", "--rotate-key", "compute-nosuch") == 1
    err = capsys.readouterr().err
    assert err.startswith("rpclib-cloud: error: ") and err.count("\n") == 1
    assert "compute-nosuch" in err


def test_rabbit_accounts_need_no_signing_keys(fresh_rabbit_url: str, tmp_path: Path) -> None:
    """The broker vouches for senders on rabbit://: no keys, URLs as before."""
    secrets = tmp_path / "s"
    assert accounts(fresh_rabbit_url, secrets) == 0
    assert not list(secrets.glob("*.key")) and not (secrets / "trust").exists()
    assert "signing_key" not in (secrets / "compute-n1.url").read_text()
