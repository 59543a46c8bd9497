"""``rpclib inspect`` on a signed bus: adverts verified, the driver's own capabilities reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rpclib
from rpclib.signing import SigningKey, TrustStore
from tests.ops.scenario import TOPIC, NotesV10, run, serve, stop


@pytest.fixture
def signed_url(tmp_path: Path, bus_url: str) -> str:
    """The bus's URL, signing as ``operator`` (trusted)."""
    (tmp_path / "trust").mkdir()
    key = SigningKey.generate("operator")
    key.save(tmp_path / "operator.key")
    TrustStore(directory=tmp_path / "trust").write(key)
    return (
        f"{bus_url}?signing_key={tmp_path / 'operator.key'}"
        f"&signing_trust={tmp_path / 'trust'}&signing_principal=operator"
    )


def test_inspect_a_signed_bus_shows_servers_and_queue_depths(signed_url):
    with rpclib.get_transport(signed_url) as transport:
        server = serve(transport, "n1", NotesV10())
        try:
            code, out = run("inspect", signed_url, "--json")
        finally:
            stop(server)
    assert code == 0
    [topic] = json.loads(out)["topics"]
    assert topic["topic"] == TOPIC
    assert [s["interfaces"] for s in topic["servers"]] == [{"notes": ["1.0"]}]
    assert topic["queues"] is not None
