"""Running a service process: start, serve until SIGTERM/SIGINT, stop cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol

LOG = logging.getLogger("services")


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def serve_forever(service: Service, name: str) -> int:
    """Start ``service``, block until a signal, stop it; the process's exit code."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    service.start()
    LOG.info("%s running; stop with SIGTERM or Ctrl-C", name)
    stopping.wait()
    LOG.info("%s stopping", name)
    service.stop()
    return 0
