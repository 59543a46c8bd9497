"""A service's signing key and trust store come from its transport URL, for any scheme.

``?signing_key=PATH&signing_trust=DIR`` (``rpclib.signing.signing_from_url``):
the key signs as the URL's user, or as ``signing_principal`` where the URL
names none. A bad setting stops a service at start with one line naming it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rpclib
from rpclib.access import Access, Account, provision
from rpclib.signing import SigningKey, TrustStore
from rpclib.transports.memory import reset_bus
from tests.rpc.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """alice's and bob's keys in ``tmp_path``, both trusted in ``tmp_path/trust``."""
    (tmp_path / "trust").mkdir()
    trust = TrustStore(directory=tmp_path / "trust")
    for principal in ("alice", "bob"):
        key = SigningKey.generate(principal)
        key.save(tmp_path / f"{principal}.key")
        trust.write(key)
    return tmp_path


def signed(url: str, folder: Path, principal: str, **extra: str) -> str:
    options = {
        "signing_key": str(folder / f"{principal}.key"),
        "signing_trust": str(folder / "trust"),
    }
    options.update(extra)
    return url + "?" + "&".join(f"{k}={v}" for k, v in options.items())


@pytest.fixture
def bus() -> Iterator[str]:
    name = f"signed{uuid.uuid4().hex[:10]}"
    yield name
    reset_bus(name)


class Whoami:
    target = rpclib.Target(namespace="who", version="1.0")

    def whoami(self, ctx: dict[str, Any]) -> str | None:
        request = rpclib.current_request()
        return request.sender if request is not None else None


def serve(transport: rpclib.Transport) -> rpclib.RPCServer:
    server = rpclib.RPCServer(transport, rpclib.Target(topic="who", server="s"), [Whoami()])
    server.start()
    return server


def ask(transport: rpclib.Transport, timeout: float = 10) -> Any:
    target = rpclib.Target(topic="who", namespace="who", version="1.0")
    return rpclib.RPCClient(transport, target, timeout=timeout).call({}, "whoami")


def test_a_url_signing_as_its_principal_names_the_sender(keys: Path, bus: str) -> None:
    """A memory bus without accounts: only the signature says who sent it."""
    server_side = rpclib.get_transport(
        signed(f"memory://{bus}", keys, "bob", signing_principal="bob")
    )
    client = rpclib.get_transport(
        signed(f"memory://{bus}", keys, "alice", signing_principal="alice")
    )
    server = serve(server_side)
    try:
        assert ask(client) == "alice"
    finally:
        server.stop()
        server.wait()
        client.close()
        server_side.close()


def test_the_key_signs_as_the_urls_user(keys: Path, bus: str) -> None:
    """A memory bus with accounts: the account's user is the principal the key signs as."""
    alice = Access("alice").call(rpclib.Target(topic="who"))
    bob = Access("bob").serve(rpclib.Target(topic="who", server="s"))
    provision(f"memory://{bus}", [Account(alice, "pa"), Account(bob, "pb")])
    server_side = rpclib.get_transport(signed(f"memory://bob:pb@{bus}", keys, "bob"))
    client = rpclib.get_transport(signed(f"memory://alice:pa@{bus}", keys, "alice"))
    server = serve(server_side)
    try:
        assert ask(client) == "alice"
    finally:
        server.stop()
        server.wait()
        client.close()
        server_side.close()


def test_a_key_removed_from_the_trust_directory_is_refused_without_a_restart(
    keys: Path, bus: str
) -> None:
    server_side = rpclib.get_transport(
        signed(f"memory://{bus}", keys, "bob", signing_principal="bob")
    )
    client = rpclib.get_transport(
        signed(f"memory://{bus}", keys, "alice", signing_principal="alice")
    )
    server = serve(server_side)
    try:
        assert ask(client) == "alice"
        (alice_pub,) = (keys / "trust").glob("alice.*.pub")
        alice_pub.unlink()

        def refused() -> bool:
            try:
                ask(client, timeout=1)
            except rpclib.MessagingTimeout:
                return True
            return False

        wait_until(refused, timeout=30)
    finally:
        server.stop()
        server.wait()
        client.close()
        server_side.close()


def test_signing_options_and_a_signing_argument_together_are_refused(keys: Path) -> None:
    from rpclib.signing import Signing

    with pytest.raises(rpclib.InvalidTransportURL, match="signing= given too"):
        rpclib.get_transport(
            signed("memory://x", keys, "alice", signing_principal="alice"),
            signing=Signing(SigningKey.generate("alice"), TrustStore({})),
        )


# --- bad settings: one line naming the setting, at start ---------------------------------


BAD = {
    # case: (signing_key file, signing_trust dir, signing_principal, what the line must name)
    "missing key": ("nope.key", "trust", None, "signing_key"),
    "not a key": ("notakey", "trust", None, "signing_key"),
    "another principal's key": ("alice.key", "trust", None, "'alice'"),
    "key not trusted": ("stray.key", "trust", None, "signing_trust"),
    "no trust store": ("scheduler.key", None, None, "signing_trust"),
    "missing trust store": ("scheduler.key", "nodir", None, "signing_trust"),
    "principal not the account's": ("scheduler.key", "trust", "admin", "signing_principal"),
    "trust store alone": (None, "trust", None, "signing_key"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_signing_setting_stops_a_service_with_one_line(keys: Path, case: str) -> None:
    principal = "scheduler-s1"
    key = SigningKey.generate(principal)
    key.save(keys / "scheduler.key")
    TrustStore(directory=keys / "trust").write(key)
    SigningKey.generate(principal).save(keys / "stray.key")
    (keys / "notakey").write_text("not a key\n")
    key_file, trust_dir, principal_option, named = BAD[case]
    options = {
        "signing_key": key_file and str(keys / key_file),
        "signing_trust": trust_dir and str(keys / trust_dir),
        "signing_principal": principal_option,
    }
    query = "&".join(f"{k}={v}" for k, v in options.items() if v is not None)
    # etcd:// with nothing listening: the settings are checked before anything connects
    url = f"etcd://{principal}:pw@127.0.0.1:9/cloud?{query}"
    proc = subprocess.run(
        [sys.executable, "-m", "services.scheduler.service", "--host", "s1"],
        cwd=ROOT,
        env=os.environ | {"RPCLIB_TRANSPORT_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "error:" in proc.stderr and named in proc.stderr, proc.stderr
    assert ":pw@" not in proc.stderr  # the password stays out of the message


def test_a_key_others_can_read_is_warned_about(
    keys: Path, bus: str, caplog: pytest.LogCaptureFixture
) -> None:
    (keys / "alice.key").chmod(0o644)
    transport = rpclib.get_transport(
        signed(f"memory://{bus}", keys, "alice", signing_principal="alice")
    )
    transport.close()
    assert any(
        r.levelname == "WARNING" and "alice.key" in r.getMessage() and "chmod 600" in r.getMessage()
        for r in caplog.records
    )
