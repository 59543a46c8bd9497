"""The compute process: learns its host from libvirt, registers, heartbeats, serves builds.

It holds no database credentials and imports no database driver: everything
it knows about instances comes in RPC messages, and everything it changes
goes to the conductor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import rpclib
from rpclib import console
from services.common import identities
from services.common.config import ServiceConfig
from services.common.process import run_service
from services.common.upgrade_levels import cap_for, describe_caps
from services.compute.images import ImageCache
from services.compute.manager import ComputeManager
from services.compute.metadata import MetadataService
from services.compute.rpcapi import TOPIC, VERSION
from services.compute.virt import HostResources, LibvirtDriver, VirtError
from services.conductor.rpcapi import ConductorAPI

LOG = logging.getLogger("services.compute")
ADVERT_INTERVAL = 3.0
"""Seconds between the node's adverts. A node that is killed (no withdrawal) drops out of
the schedulers' view when its advert expires, three intervals later."""
OPTIONS = (
    "transport_url",
    "host",
    "log_level",
    "state_dir",
    "libvirt_uri",
    "heartbeat_interval",
    "image_dirs",
    "authorization",
    "upgrade_levels",
    "metadata_address",
    "metadata_port",
)


class ComputeService:
    """One compute node on ``compute.<host>``."""

    def __init__(
        self,
        transport: rpclib.Transport,
        *,
        host: str,
        libvirt_uri: str,
        state_dir: Path,
        heartbeat_interval: float = 10.0,
        resources: HostResources | None = None,
        register_timeout: float = 600.0,
        image_dirs: Sequence[Path] | None = None,
        authorization: bool = True,
        upgrade_levels: Mapping[str, str] | None = None,
        metadata: tuple[str, int] | None = None,
    ) -> None:
        """``metadata``: the (address, port) of this node's metadata service (None: none)."""
        identities.principal(identities.COMPUTE, host)  # a host that cannot name one fails here
        self.host = host
        self.levels = dict(upgrade_levels or {})
        self.conductor = ConductorAPI(transport, version_cap=cap_for(self.levels, "conductor"))
        self.driver = LibvirtDriver(libvirt_uri, instances_dir=state_dir / "instances" / host)
        # Users name images; a path must not let them read compute's own files.
        self.images = ImageCache(state_dir / "images", allowed_dirs=image_dirs or ())
        if not image_dirs:
            LOG.info(
                "compute %s takes images by http(s) URL only; allow local image "
                "directories with --image-dirs",
                host,
            )
        self.manager = ComputeManager(host, self.driver, self.images, self.conductor)
        self.server = rpclib.RPCServer(
            transport,
            rpclib.Target(topic=TOPIC, server=host),
            [self.manager],
            policy=identities.server_policy(identities.COMPUTE, authorization),
            advert_interval=ADVERT_INTERVAL,
        )
        self.heartbeat_interval = heartbeat_interval
        self.register_timeout = register_timeout
        self._resources = resources
        self._stop = threading.Event()
        self.metadata: MetadataService | None = None
        if metadata is not None:
            self.metadata = MetadataService(
                host,
                lambda address: self.conductor.get_instance_metadata({}, host, address),
                address=metadata[0],
                port=metadata[1],
            )

    def start(self) -> None:
        r = self._resources or self.driver.host_resources()
        self.server.start()
        self._register(r)
        threading.Thread(target=self._heartbeats, name="compute-heartbeat", daemon=True).start()
        if self.metadata is not None:
            self._start_metadata(self.metadata)
        LOG.info("compute %s up: %d vCPU, %d MB, %d GB", self.host, r.vcpus, r.memory_mb, r.disk_gb)
        LOG.info(
            "compute %s serves compute %s; %s",
            self.host,
            VERSION,
            describe_caps(self.levels, ("conductor",)),
        )

    def _register(self, r: HostResources) -> None:
        """Register with the conductor, waiting for it if it is not up yet (any start order)."""
        delay = 0.5
        deadline = time.monotonic() + self.register_timeout
        while True:
            try:
                self.conductor.register_compute(
                    {}, self.host, r.vcpus, r.memory_mb, r.disk_gb, {"compute": VERSION}
                )
                return
            except (rpclib.Undeliverable, rpclib.MessagingTimeout, rpclib.ConnectionLost) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                LOG.warning("conductor not reachable yet (%s); retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)

    def _start_metadata(self, metadata: MetadataService) -> None:
        """Serve guests their metadata; a node that cannot bind the address still builds."""
        try:
            metadata.start()
        except (OSError, OverflowError) as exc:  # taken, not ours, or no such port
            address, port = metadata.address
            LOG.error(
                "compute %s: no metadata service, cannot listen on %s:%d (%s); guests get no "
                "keys (add the address to the host, see docs/metadata.md, or set "
                "--metadata-address)",
                self.host,
                address,
                port,
                getattr(exc, "strerror", None) or exc,
            )
            self.metadata = None

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.conductor.heartbeat({}, self.host, "compute")
            except rpclib.MessagingError as exc:
                LOG.warning("heartbeat not sent: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self.metadata is not None:
            self.metadata.stop()
        self.server.stop()
        self.server.wait(60)
        self.driver.close()


def _build(c: ServiceConfig, t: rpclib.Transport) -> ComputeService:
    # a libvirt URI with no known domain type is refused here (ValueError: a usage error)
    with console.setting("--libvirt-uri", (VirtError,)):
        return ComputeService(
            t,
            host=c.host,
            libvirt_uri=c.libvirt_uri,
            state_dir=c.state_dir,
            heartbeat_interval=c.heartbeat_interval,
            image_dirs=c.image_dir_list(),
            authorization=c.authorization,
            upgrade_levels=c.upgrade_levels,
            metadata=None if c.metadata_address == "off" else (c.metadata_address, c.metadata_port),
        )


def main(argv: Sequence[str] | None = None) -> int:
    # libvirt is first connected at start, to learn the host's resources
    return run_service("compute", argv, OPTIONS, __doc__, _build, {VirtError: "--libvirt-uri"})


if __name__ == "__main__":
    import sys

    sys.exit(main())
