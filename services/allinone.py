"""The main job: a small cloud booting instances, on the embedded defaults.

With the default ``memory://`` transport, conductor (SQLite), scheduler,
billing and two compute nodes (libvirt's test hypervisor) run in this one
process. With a broker URL (``--transport-url rabbit://...``) each service runs
as its own process, started here and stopped by its pid. Either way the story
is the same: boot several instances, show them ACTIVE with their hosts,
delete one, and print the usage report billing kept.

Every service instance logs in as itself (services.common.identities): on
``memory://`` this creates one account per service on the bus, with exactly
the grants it needs; on a broker it creates them through the broker's
``rpclib.access`` module with random passwords, using the URL's credentials as
the administrator's, and once the services have stopped (at the end, on Ctrl-C
or SIGTERM) removes those accounts and the durable queues they consumed again
(``rpclib.access.deprovision``: ``rabbit://``; elsewhere a warning says what
stays). On ``etcd://``, where only a signature tells who sent a message, each
service also gets its own signing key (in the state directory's ``keys/``, the
public halves in ``keys/trust/``) through the signing options of its URL.
``--insecure`` skips all this and turns authorization off (everyone shares the
URL's account and senders are not checked), loudly.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import rpclib
from rpclib import console
from rpclib.access import Access, deprovision
from rpclib.exceptions import InvalidTransportURL, UnknownTransport
from rpclib.transports.url import parse_url
from services.billing.service import BillingService
from services.cli import Cloud
from services.common import identities
from services.common.accounts import (
    CloudHosts,
    ProvisioningUnavailable,
    admin_url_for,
    needs_signing,
    provision_cloud,
)
from services.compute.service import ComputeService
from services.compute.virt import VirtError, simulated_node_uri
from services.conductor.rpcapi import ConductorAPI
from services.conductor.service import ConductorService
from services.scheduler.service import SchedulerService

if TYPE_CHECKING:
    from rpclib.signing import Signing  # the signing extra, needed only to sign

COMPUTE_HOSTS = ("compute1", "compute2")
HOSTS = CloudHosts("conductor1", "scheduler1", "billing1", COMPUTE_HOSTS)
LOG = logging.getLogger("services.allinone")
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


def login_urls(
    url: str, hosts: CloudHosts, accounts: bool, keys_dir: Path | None = None
) -> dict[str, str]:
    """The URL each principal logs in with: its own new account (signing with its own
    key from ``keys_dir`` where the transport needs signatures), or ``url`` for all."""
    if accounts:
        return provision_cloud(url, hosts, keys_dir=keys_dir)
    LOG.warning(
        "no per-service accounts: every service shares the account of %s, so the bus "
        "cannot tell them apart (only signatures can)",
        parse_url(url),
    )
    return {a.principal: url for a in hosts.accesses()}


class Embedded:
    """Every service in this process on one in-memory bus, each logged in as itself."""

    def __init__(
        self,
        url: str,
        state: Path,
        libvirt_uri: str,
        *,
        authorization: bool = True,
        accounts: bool | None = None,
        signing: Callable[[str], Signing] | None = None,
        hosts: CloudHosts = HOSTS,
        metadata: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        """``accounts`` (default: as ``authorization``) provisions one per service;
        ``signing`` gives each principal's :class:`~rpclib.signing.Signing` (to sign
        on a bus without accounts); ``metadata`` maps a compute host to the (address,
        port) of its metadata service (default: none)."""
        self.urls = login_urls(url, hosts, authorization if accounts is None else accounts)
        self.signing = signing
        self.transports: dict[str, rpclib.Transport] = {}
        on = authorization
        self._state, self._libvirt_uri, self._authorization = state, libvirt_uri, on
        self._metadata = dict(metadata or {})

        def login(service: str, host: str) -> rpclib.Transport:
            return self.login(identities.principal(service, host))

        self.conductor = ConductorService(
            login("conductor", hosts.conductor),
            host=hosts.conductor,
            state_dir=state,
            authorization=on,
        )
        self.services: list[ConductorService | SchedulerService | BillingService | ComputeService]
        self.services = [
            self.conductor,
            SchedulerService(
                login("scheduler", hosts.scheduler), host=hosts.scheduler, authorization=on
            ),
            BillingService(
                login("billing", hosts.billing),
                host=hosts.billing,
                state_dir=state,
                authorization=on,
            ),
            *(self._new_compute(h) for h in hosts.computes),
        ]

    def _new_compute(self, host: str) -> ComputeService:
        return ComputeService(
            self.login(identities.principal("compute", host)),
            host=host,
            libvirt_uri=self._libvirt_uri,
            state_dir=self._state,
            image_dirs=[self._state],
            authorization=self._authorization,
            metadata=self._metadata.get(host),
        )

    def compute(self, host: str) -> ComputeService:
        """The compute service of ``host``."""
        (node,) = [s for s in self.services if isinstance(s, ComputeService) and s.host == host]
        return node

    def restart_compute(self, host: str) -> ComputeService:
        """Start a new compute service for ``host`` in place of its stopped one (as a
        restarted process would: same login, it takes over the old one's queue)."""
        old = self.compute(host)
        new = self._new_compute(host)
        new.start()
        self.services[self.services.index(old)] = new
        return new

    @property
    def admin_url(self) -> str:
        """The URL the user command logs in with (as ``admin``)."""
        return self.urls[identities.ADMIN]

    def login(self, principal: str) -> rpclib.Transport:
        """``principal``'s transport (opened once, closed by stop())."""
        if principal not in self.transports:
            signing = self.signing(principal) if self.signing is not None else None
            self.transports[principal] = rpclib.get_transport(self.urls[principal], signing=signing)
        return self.transports[principal]

    def start(self) -> None:
        for service in self.services:
            service.start()

    def audit(self) -> None:
        self.conductor.audit()

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        for transport in self.transports.values():
            transport.close()


class Processes:
    """Every service as its own process on a broker."""

    def __init__(
        self,
        url: str,
        state: Path,
        libvirt_uri: str,
        *,
        authorization: bool = True,
        hosts: CloudHosts = HOSTS,
        urls: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        """``urls``: each principal's login URL, if provisioned already (default: made
        here); ``log_dir``: each process's stderr in ``log_dir/PRINCIPAL.log``."""
        self.provisioned: list[Access] = []
        """The accesses whose accounts this run made (removed again by :meth:`clean_up`)."""
        self.admin = admin_url_for(url)
        if urls is None:
            urls = login_urls(url, hosts, authorization, state / "keys")
            if authorization:
                self.provisioned = hosts.accesses()
        self.urls = dict(urls)
        self.log_dir = log_dir
        common = ["--log-level", "WARNING", "--authorization", str(authorization).lower()]
        files = ["--state-dir", str(state)]
        # (principal, module, arguments); each process gets its own URL in its environment,
        # so no password shows in the process list.
        self.commands = [
            (
                identities.principal("conductor", hosts.conductor),
                "services.conductor.service",
                ["--host", hosts.conductor, "--audit-interval", "2", *files],
            ),
            (
                identities.principal("scheduler", hosts.scheduler),
                "services.scheduler.service",
                ["--host", hosts.scheduler],
            ),
            (
                identities.principal("billing", hosts.billing),
                "services.billing.service",
                ["--host", hosts.billing, *files],
            ),
            *(
                (
                    identities.principal("compute", h),
                    "services.compute.service",
                    [
                        *("--host", h, "--libvirt-uri", _node_uri(libvirt_uri, state, n)),
                        *("--metadata-address", "off"),  # guests of test:// ask nothing
                        *("--image-dirs", str(state), *files),
                    ],
                )
                for n, h in enumerate(hosts.computes)
            ),
        ]
        self.common = common
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def admin_url(self) -> str:
        """The URL the user command logs in with (as ``admin``)."""
        return self.urls[identities.ADMIN]

    def start(self) -> None:
        for principal, module, args in self.commands:
            env = os.environ | {"RPCLIB_TRANSPORT_URL": self.urls[principal]}
            command = [sys.executable, "-m", module, *args, *self.common]
            if self.log_dir is None:
                self.procs.append(subprocess.Popen(command, env=env))
                continue
            with open(self.log_dir / f"{principal}.log", "ab") as log:
                self.procs.append(subprocess.Popen(command, env=env, stderr=log))
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
                proc.wait()

    def clean_up(self) -> None:
        """After :meth:`stop`: remove the durable queues of the accounts this run made,
        then the accounts; one line says what, a failure is one warning line."""
        if not self.provisioned:
            return
        try:
            removed = deprovision(self.admin, self.provisioned)
        except Exception as exc:  # never a traceback nor another exit status: only a warning
            LOG.warning("could not remove this run's accounts and queues: %s", exc)
            return
        say(
            f"== removed this run's {len(removed.queues)} queue(s) and "
            f"{len(removed.accounts)} account(s) from the broker"
        )


def _node_uri(libvirt_uri: str, state: Path, index: int) -> str:
    """Each simulated compute process its own test node (and so its own addresses)."""
    if libvirt_uri != "test:///default":
        return libvirt_uri
    return simulated_node_uri(state, index)


def own_state_dir() -> Path:
    """A fresh temporary state directory, removed when this process exits: normally, on
    Ctrl-C, or on SIGTERM (turned into SystemExit so every ``finally`` runs first)."""
    state = Path(tempfile.mkdtemp(prefix="rpclib-cloud-"))
    atexit.register(shutil.rmtree, state, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return state


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
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no per-service accounts and no authorization (one shared account, senders "
        "unchecked): only for a bus that cannot authenticate",
    )
    console.add_standard_options(parser)
    args = parser.parse_args(argv)
    transport_errors = (rpclib.TransportError, InvalidTransportURL, UnknownTransport)
    return console.run(
        "rpclib-allinone",
        lambda: _run(args),
        debug=args.debug,
        settings=dict.fromkeys(transport_errors, "--transport-url") | {VirtError: "--libvirt-uri"},
    )


def _run(args: argparse.Namespace) -> int:
    """The story; errors propagate to :func:`rpclib.console.run` (one line)."""
    logging.basicConfig(level=logging.WARNING, format="   [%(levelname)s] %(name)s: %(message)s")
    with console.setting("--transport-url", (rpclib.TransportError,)):
        rpclib.get_transport(args.transport_url).close()  # a bad URL or login, named up front
    state = args.state_dir or own_state_dir()
    image = make_image(state)
    embedded = args.transport_url.startswith("memory:")
    kind = Embedded if embedded else Processes
    if not embedded and threading.current_thread() is threading.main_thread():
        # SIGTERM as SystemExit, so the services stop and the broker is cleaned up.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        cloud_services = kind(
            args.transport_url, state, args.libvirt_uri, authorization=not args.insecure
        )
    except (ProvisioningUnavailable, identities.BadHost) as exc:
        raise console.UsageError(str(exc)) from None
    transport = rpclib.get_transport(cloud_services.admin_url)
    mode = "in this process" if embedded else "as separate processes"
    say(f"== starting conductor, scheduler, billing, {', '.join(COMPUTE_HOSTS)} {mode}")
    say(f"   transport {transport.url}, libvirt {args.libvirt_uri}, state in {state}")
    accounts = "no accounts, authorization OFF" if args.insecure else "one account per service"
    if not args.insecure and needs_signing(args.transport_url):
        accounts += ", each signing with its own key"
    say(f"   identities: {accounts} ({', '.join(cloud_services.urls)})")
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
        if isinstance(cloud_services, Processes):
            cloud_services.clean_up()


if __name__ == "__main__":
    sys.exit(main())
