"""A three-member etcd cluster on 127.0.0.1 for failover tests.

Each member is an :class:`~tests.support.etcd.EtcdServer` with its own client
and peer ports and data dir under one temp folder; all are launched at once
(a member waits for a quorum before it answers) and stopped by the pids this
module started. :meth:`EtcdCluster.leader` asks the members which of them
leads; :meth:`EtcdCluster.url` lists every member, a chosen one first.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.etcd import EtcdRequestError, EtcdServer

SIZE = 3
LEADER_TIMEOUT = 30.0


class EtcdCluster:
    """``size`` etcd members of one cluster (a fresh cluster token per instance)."""

    def __init__(self, folder: Path, *, binary: str | None = None, size: int = SIZE) -> None:
        self.folder = folder
        self.members = [
            EtcdServer(folder / f"m{i}", binary=binary, name=f"m{i}") for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.folder.mkdir(parents=True, exist_ok=True)
            member.initial_cluster = initial

    def start(self) -> None:
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_ready()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def running(self) -> list[EtcdServer]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    def leader(self, timeout: float = LEADER_TIMEOUT) -> EtcdServer:
        """The member that leads now, once the running members agree on one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids: dict[int, EtcdServer] = {}
            leaders: set[int] = set()
            for member in self.running():
                with contextlib.suppress(OSError, http.client.HTTPException, EtcdRequestError):
                    status = member.request("maintenance/status", {})
                    ids[int(status["header"]["member_id"])] = member
                    leaders.add(int(status.get("leader", 0)))
            if len(leaders) == 1 and (lead := leaders.pop()) in ids:
                return ids[lead]
            time.sleep(0.05)
        pytest.fail(f"the etcd cluster in {self.folder} agreed on no leader in {timeout:.0f}s")

    def url(
        self, prefix: str | None = None, *, first: EtcdServer | None = None, **options: str
    ) -> str:
        """``etcd://`` listing every member (``first`` at the head), under ``prefix``."""
        order: Sequence[EtcdServer] = self.members
        if first is not None:
            order = [first, *(m for m in self.members if m is not first)]
        hosts = ",".join(m.endpoint for m in order)
        prefix = prefix or f"t{uuid.uuid4().hex[:10]}"
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"etcd://{hosts}/{prefix}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def running_cluster(binary: str | None = None) -> Iterator[EtcdCluster]:
    """A started cluster, stopped (by pid) and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-cluster-"))
    cluster = EtcdCluster(folder, binary=binary)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
