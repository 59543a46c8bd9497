"""etcd servers for the etcd transport's tests: real ``etcd`` processes on 127.0.0.1.

``etcd_server`` is one server for the whole session (free ports, a data dir
in a temp folder); tests share it and keep apart by key prefix
(``etcd_url`` gives each test its own). Tests that restart or compact etcd
use ``private_etcd``: a server of their module's own. Servers are started by
this module and stopped by the pid it started (SIGTERM, then SIGKILL), never
by name; a parent-death signal and an atexit hook catch a dying pytest. If
etcd cannot start, the test fails with its log: a missing etcd is an
environment error, never a skip.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
ETCD = os.environ.get("RPCLIB_ETCD", "/usr/bin/etcd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)


class EtcdServer:
    """One etcd member with its own ports and data dir; start, stop, restart, compact."""

    def __init__(self, folder: Path) -> None:
        if not os.access(ETCD, os.X_OK):
            found = shutil.which("etcd")
            if found is None:
                pytest.fail(f"etcd is not installed ({ETCD}); install Debian's etcd-server")
            self.binary = found
        else:
            self.binary = ETCD
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "etcd.log"
        self.port = _free_port()
        self.peer_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, prefix: str | None = None, **options: str) -> str:
        """An etcd:// URL on this server under ``prefix`` (fresh if None)."""
        prefix = prefix or f"t{uuid.uuid4().hex[:10]}"
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"etcd://{self.endpoint}/{prefix}" + (f"?{query}" if query else "")

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        client, peer = f"http://{HOST}:{self.port}", f"http://{HOST}:{self.peer_port}"
        args = [
            self.binary,
            "--name", "rpclib-test",
            "--data-dir", str(self.data),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"rpclib-test={peer}",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError):
                if self.request("kv/range", {"key": _b64("health")}) is not None:
                    return
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"etcd did not start on {self.endpoint}:\n{tail}")

    def stop(self) -> None:
        """Stop the process this object started (by its pid)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def request(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One JSON-gateway request (the tests' own view of etcd, not the driver's)."""
        req = urllib.request.Request(
            f"http://{self.endpoint}/v3/{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def revision(self) -> int:
        return int(self.request("kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self) -> int:
        """Compact away all history up to now; the revision compacted at."""
        revision = self.revision()
        self.request("kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def keys(self, prefix: str) -> dict[str, int]:
        """Key -> lease id of every key under ``/prefix/``."""
        start = f"/{prefix.strip('/')}/"
        end = start[:-1] + chr(ord(start[-1]) + 1)
        result = self.request(
            "kv/range", {"key": _b64(start), "range_end": _b64(end), "keys_only": True}
        )
        return {
            base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0))
            for kv in result.get("kvs", ())
        }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """The session's shared etcd server."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-"))
    server = EtcdServer(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def etcd_url(etcd_server: EtcdServer) -> str:
    """An etcd:// URL on the shared server under a key prefix no other test uses."""
    return etcd_server.url()


@pytest.fixture(scope="module")
def private_etcd() -> Iterator[EtcdServer]:
    """An etcd server of the module's own, for tests that restart or compact it."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-private-"))
    server = EtcdServer(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
