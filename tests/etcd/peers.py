"""Start etcd_peer.py processes from a test and read what they print."""

from __future__ import annotations

from pathlib import Path

from tests.support.processes import PeerScript, read_records

HERE = Path(__file__).parent

__all__ = ["Peer", "read_records"]


class Peer(PeerScript):
    """One etcd_peer.py process (see :class:`PeerScript`)."""

    def __init__(self, *args: str, log: Path) -> None:
        super().__init__(HERE / "etcd_peer.py", *args, log=log)
