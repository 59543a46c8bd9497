"""The main job: a small cloud booting instances, on the embedded defaults.

With the default ``memory://`` transport, conductor (SQLite), scheduler,
billing and two compute nodes (libvirt's test hypervisor) run in this one
process. With a broker URL (``--transport-url rabbit://...``) each service runs
as its own process, started here and stopped by its pid. Either way the story
is the same: boot several instances, show them ACTIVE with their hosts,
delete one, and print the usage report billing kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import rpclib
from services.billing.service import BillingService
from services.cli import Cloud
from services.compute.service import ComputeService
from services.conductor.rpcapi import ConductorAPI
from services.conductor.service import ConductorService
from services.scheduler.service import SchedulerService

COMPUTE_HOSTS = ("compute1", "compute2")
BOOTS = (
    ("web1", "acme", 1, 256, 1),
    ("web2", "acme", 1, 256, 1),
    ("db1", "acme", 2, 1024, 2),
    ("batch1", "globex", 2, 512, 1),
)


def say(text: str = "") -> None:
    print(text, flush=True)


def make_image(directory: Path) -> Path:
    """A tiny qcow2 base image (the test hypervisor never reads it; qemu-img must)."""
    image = directory / "tiny.qcow2"
    if not image.exists():
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"],
            check=True,
            capture_output=True,
            text=True,
        )
    return image


class Embedded:
    """Every service in this process, on one in-memory bus."""

    def __init__(self, transport: rpclib.Transport, state: Path, libvirt_uri: str) -> None:
        self.conductor = ConductorService(transport, host="conductor1", state_dir=state)
        self.services: list[ConductorService | SchedulerService | BillingService | ComputeService]
        self.services = [
            self.conductor,
            SchedulerService(transport, host="scheduler1"),
            BillingService(transport, host="billing1", state_dir=state),
            *(
                ComputeService(
                    transport, host=h, libvirt_uri=libvirt_uri, state_dir=state, image_dirs=[state]
                )
                for h in COMPUTE_HOSTS
            ),
        ]

    def start(self) -> None:
        for service in self.services:
            service.start()

    def audit(self) -> None:
        self.conductor.audit()

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


class Processes:
    """Every service as its own process on a broker."""

    def __init__(self, url: str, state: Path, libvirt_uri: str) -> None:
        common = ["--transport-url", url, "--log-level", "WARNING"]
        files = ["--state-dir", str(state)]
        self.commands = [
            ["services.conductor.service", "--host", "conductor1", "--audit-interval", "2", *files],
            ["services.scheduler.service", "--host", "scheduler1"],
            ["services.billing.service", "--host", "billing1", *files],
            *(
                [
                    "services.compute.service",
                    *("--host", h, "--libvirt-uri", libvirt_uri, "--image-dirs", str(state)),
                    *files,
                ]
                for h in COMPUTE_HOSTS
            ),
        ]
        self.common = common
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for module, *args in self.commands:
            self.procs.append(subprocess.Popen([sys.executable, "-m", module, *args, *self.common]))
            time.sleep(0.5 if module.endswith("conductor.service") else 0)

    def audit(self) -> None:
        time.sleep(2.5)  # the conductor process audits every 2 s in this mode

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def registered_computes(conductor: ConductorAPI) -> int:
    """Compute nodes the conductor knows (0 while the conductor is not serving yet)."""
    try:
        return len(conductor.allocation_candidates({}, 1, 1, 1))
    except rpclib.MessagingError:
        return 0


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rpclib-allinone", description=__doc__)
    parser.add_argument(
        "--transport-url", default=os.environ.get("RPCLIB_TRANSPORT_URL", "memory://cloud")
    )
    parser.add_argument("--libvirt-uri", default="test:///default")
    parser.add_argument("--state-dir", type=Path, help="default: a fresh temporary directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="   [%(levelname)s] %(name)s: %(message)s")
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="rpclib-cloud-"))
    image = make_image(state)
    embedded = args.transport_url.startswith("memory:")
    transport = rpclib.get_transport(args.transport_url)
    cloud_services = (
        Embedded(transport, state, args.libvirt_uri)
        if embedded
        else Processes(args.transport_url, state, args.libvirt_uri)
    )
    mode = "in this process" if embedded else "as separate processes"
    say(f"== starting conductor, scheduler, billing, {', '.join(COMPUTE_HOSTS)} {mode}")
    say(f"   transport {transport.url}, libvirt {args.libvirt_uri}, state in {state}")
    started = dt.datetime.now(dt.UTC)
    cloud_services.start()
    cloud = Cloud(transport)
    try:
        wait_until(
            lambda: registered_computes(cloud.conductor) == len(COMPUTE_HOSTS),
            60,
            "both compute nodes to register",
        )
        say("\n== booting instances")
        booted = {}
        for name, project, vcpus, memory, disk in BOOTS:
            instance = cloud.boot(
                name,
                vcpus=vcpus,
                memory_mb=memory,
                disk_gb=disk,
                image=str(image),
                project_id=project,
            )
            booted[name] = instance
        say("\n== instances")
        say(cloud.list_table())
        victim = booted["web2"]
        say(f"\n== deleting {victim.name}")
        cloud.delete(str(victim.uuid))
        say(cloud.list_table())
        cloud_services.audit()
        say("\n== usage (from billing's ledger)")
        end = dt.datetime.now(dt.UTC)
        wait_until(
            lambda: (
                sum(r["instances"] for r in cloud.billing.usage(cloud.ctx, started, end))
                == len(BOOTS)
            ),
            60,
            "billing to account for every instance",
        )
        say(cloud.usage_table(started, end))
        return 0
    finally:
        cloud_services.stop()
        transport.close()


if __name__ == "__main__":
    sys.exit(main())
