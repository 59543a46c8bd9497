"""Running a service process: start, serve until SIGTERM/SIGINT, stop cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import rpclib
from services.common import config as cfg
from services.common import identities

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


def run_service(
    name: str,
    argv: Sequence[str] | None,
    options: Sequence[str],
    description: str | None,
    build: Callable[[cfg.ServiceConfig, rpclib.Transport], Service],
) -> int:
    """A service's ``main``: options, logging, transport, serve until signalled, clean up."""
    parser = argparse.ArgumentParser(prog=f"rpclib-{name}", description=description)
    cfg.add_arguments(parser, options)
    config = cfg.load(name, parser.parse_args(argv), options)
    config.setup_logging()
    try:
        identities.principal(name, config.host)
    except identities.BadHost as exc:
        raise SystemExit(f"rpclib-{name}: {exc} (pass --host)") from None
    if not config.authorization:
        LOG.warning(
            "rpclib-%s runs with authorization = false: it trusts whatever senders claim", name
        )
    try:
        transport = rpclib.get_transport(config.transport_url)
    except rpclib.InvalidTransportURL as exc:  # a bad URL or signing setting: one line
        raise SystemExit(f"rpclib-{name}: error: {exc}") from None
    try:
        return serve_forever(build(config, transport), name)
    finally:
        transport.close()
