"""Running a service process: start, serve until SIGTERM/SIGINT, stop cleanly."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Protocol

import rpclib
from rpclib import console
from rpclib.transports.url import parse_url
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
    try:
        service.start()
    except BaseException:
        with suppress(Exception):  # release what started before the failure
            service.stop()
        raise
    LOG.info("%s running; stop with SIGTERM or Ctrl-C", name)
    stopping.wait()
    LOG.info("%s stopping", name)
    service.stop()
    return 0


def refuse_in_process_bus(url: str) -> None:
    """A lone service process on ``memory://`` would serve nobody: refuse, saying what to pass."""
    if parse_url(url).scheme == "memory":
        raise console.UsageError(
            f"--transport-url: {parse_url(url)} is an in-process bus that no other "
            "process can reach; pass a broker's URL (--transport-url "
            "rabbit://USER:PASSWORD@HOST:5672/, etcd://..., amqp1://..., or set "
            "RPCLIB_TRANSPORT_URL), or run every service in one process with rpclib-allinone"
        )


def run_service(
    name: str,
    argv: Sequence[str] | None,
    options: Sequence[str],
    description: str | None,
    build: Callable[[cfg.ServiceConfig, rpclib.Transport], Service],
    settings: Mapping[type[BaseException], str] | None = None,
) -> int:
    """A service's ``main``: options, logging, transport, serve until signalled, clean up.

    Setup mistakes end the process with one ``rpclib-NAME: error: ...`` line
    (tracebacks with ``--debug``); ``settings`` names the setting behind the
    exceptions ``build`` or the service's start may raise (``{VirtError:
    "--libvirt-uri"}``). The bus must be one other processes can reach.
    """
    prog = f"rpclib-{name}"
    parser = argparse.ArgumentParser(prog=prog, description=description)
    cfg.add_arguments(parser, options)
    console.add_standard_options(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        config = cfg.load(name, args, options)
        try:
            identities.principal(name, config.host)
        except identities.BadHost as exc:
            raise console.UsageError(f"--host: {exc}") from None
        with console.setting("--transport-url", (rpclib.TransportError,)):
            refuse_in_process_bus(config.transport_url)
        config.setup_logging()
        if not config.authorization:
            LOG.warning("%s runs with authorization = false: it trusts any sender's claim", prog)
        with console.setting(
            "--transport-url", (rpclib.TransportError, rpclib.InvalidTransportURL)
        ):
            transport = rpclib.get_transport(config.transport_url)
        try:
            return serve_forever(build(config, transport), name)
        finally:
            transport.close()

    named: dict[type[BaseException], str] = {rpclib.TransportError: "--transport-url"}
    named.update(settings or {})
    return console.run(prog, body, debug=args.debug, settings=named)
