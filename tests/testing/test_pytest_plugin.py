"""The pytest plugin: fixtures a user's test suite gets from installing rpclib."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import rpclib
from rpclib.testing import StubServer, TestBus


def test_the_bus_fixture_is_a_bus_of_this_test_only(rpclib_bus: TestBus) -> None:
    assert rpclib_bus.url.startswith("memory://test-")


def test_the_stub_server_fixture_serves_on_the_tests_bus(
    rpclib_stub_server: Callable[..., StubServer], rpclib_transport: rpclib.Transport
) -> None:
    stub = rpclib_stub_server(rpclib.Target(topic="t", server="s"), {"ping": "pong"})
    assert rpclib.RPCClient(rpclib_transport, rpclib.Target(topic="t")).call({}, "ping") == "pong"
    assert [c.method for c in stub.calls] == ["ping"]


def test_a_project_outside_this_repository_gets_the_fixtures_by_entry_point(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import rpclib

            def test_uses_fixtures(rpclib_stub_server, rpclib_transport):
                rpclib_stub_server(rpclib.Target(topic="t", server="s"), {"ping": 1})
                client = rpclib.RPCClient(rpclib_transport, rpclib.Target(topic="t"))
                assert client.call({}, "ping") == 1
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
