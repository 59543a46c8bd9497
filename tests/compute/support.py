"""Helpers for the compute tests: a recording conductor, a clock, instances, an image server."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from services.objects import Flavor, Instance

ALLOCATION = {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 1}


class StepClock:
    """Aware UTC time that moves 1 ms per reading."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(milliseconds=1)
            return self._now


@dataclass(frozen=True)
class Update:
    instance_uuid: str
    host: str
    sequence: int
    state: dict[str, Any]


class RecordingConductor:
    """Stands in for the conductor's RPC client: records updates and releases, in order."""

    def __init__(self) -> None:
        self.events: list[Update | tuple[str, str]] = []
        self._lock = threading.Lock()

    def instance_update(
        self,
        ctx: Mapping[str, Any],
        instance_uuid: str,
        host: str,
        sequence: int,
        state: dict[str, Any],
    ) -> None:
        with self._lock:
            self.events.append(Update(instance_uuid, host, sequence, dict(state)))

    def release_allocation(self, ctx: Mapping[str, Any], instance_uuid: str) -> None:
        with self._lock:
            self.events.append(("release", instance_uuid))

    def updates(self, instance_uuid: str | None = None) -> list[Update]:
        with self._lock:
            return [
                e
                for e in self.events
                if isinstance(e, Update) and instance_uuid in (None, e.instance_uuid)
            ]

    def states(self, instance_uuid: str | None = None) -> list[str]:
        return [u.state["vm_state"] for u in self.updates(instance_uuid)]


def make_instance(**fields: Any) -> Instance:
    values: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "name": "vm1",
        "project_id": "p1",
        "user_id": "u1",
        "host": "node1",
        "flavor": Flavor(vcpus=2, memory_mb=512, disk_gb=1),
        "image": "cirros",
    }
    values.update(fields)
    return Instance(**values)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: ImageServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests[self.path] += 1
        time.sleep(self.server.delay)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ImageServer(http.server.ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1 (a free port), counting GETs per path."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.delay = 0.0
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="image-server"
        )

    def url(self, name: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/{name}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self._thread.join()
        self.server_close()
