"""A rolling upgrade of the reference cloud, one node at a time, while boots keep succeeding.

Every service runs as its own process on etcd:// (docs/upgrades.md is the
runbook this follows). The cloud starts on the previous release: real old
code taken from git (:data:`OLD_RELEASE`), run with ``PYTHONPATH`` pointing
at it. The repository never released compute 1.0 (compute arrived at 1.1 in
44cdcf6), so the previous release is that commit with compute's 1.1 change
reverted by ``compute_1_0.patch``: its nodes advertise compute 1.0 and take
``build_instance`` without ``network``; everything else (rpclib's wire
format, directory, serializer, the other services) is the old tree as it
was committed.

The upgrade, each step with boots succeeding on both sides of it:

1. conductor: a new-release conductor joins on the same database, the old one stops;
2. scheduler: a new one joins *pinned* (``[upgrade_levels] compute = "1.0"``), the old stops;
3. compute c1: the old process stops, a new one starts on the same host;
   the pinned scheduler keeps sending c1 1.0;
4. the pin is lifted: an unpinned (auto) scheduler replaces the pinned one;
   it sends c1 1.1 and c2, still old, 1.0;
5. compute c2: replaced like c1; the auto cap for c2 rises from 1.0 to 1.1.

Every boot, whenever it starts, must reach ACTIVE; after each step, boots
must have reached ACTIVE on both nodes before the next one. The caps are read
from the schedulers' logs (the lines docs/upgrades.md tells operators to follow).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import rpclib
from services.allinone import make_image
from services.allinone import wait_until as poll_until
from services.compute.rpcapi import VERSION as COMPUTE_VERSION
from services.conductor.rpcapi import ConductorAPI
from services.scheduler.rpcapi import SchedulerAPI
from tests.rpc.helpers import wait_until

OLD_RELEASE = "cae22354aa931bbe21f44572c218e5a506bb0d5f"
"""The previous release's base: main before per-service pins existed."""
OLD_COMPUTE = "1.0"
NEW = Path(__file__).resolve().parents[2]
PATCH = Path(__file__).with_name("compute_1_0.patch")
WAIT = 60.0
BOOTS_PER_STEP = 2
SETTLE = 30.0
"""Seconds a boot may take to settle (ACTIVE or ERROR); one takes about a second."""


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``rpclib`` and ``services`` packages (a PYTHONPATH directory)."""
    root = tmp_path_factory.mktemp("old-release")
    archive = root / "old.tar"
    made = subprocess.run(
        ["git", "-C", str(NEW), "archive", "-o", str(archive), OLD_RELEASE, "rpclib", "services"],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.fail(
            f"the previous release {OLD_RELEASE} is not in this clone ({made.stderr.strip()}); "
            "a shallow clone needs `git fetch --unshallow`"
        )
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    # no repository above root: git apply must patch these files, not a repository's
    env = os.environ | {"GIT_CEILING_DIRECTORIES": str(root.parent)}
    subprocess.run(["git", "apply", str(PATCH)], cwd=root, env=env, check=True)
    return root


class Node:
    """One service process of one release; its log goes to ``<logs>/<name>.log``."""

    def __init__(self, tree: Path, module: str, name: str, url: str, logs: Path, *args: str):
        self.name = name
        self.log = logs / f"{name}.log"
        env = os.environ | {"PYTHONPATH": str(tree), "RPCLIB_TRANSPORT_URL": url}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args, "--authorization", "false"],
                cwd=tree,
                env=env,
                stdout=out,
                stderr=out,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (the service drains what it has started), then wait for the exit."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.text()}") from None


@dataclass
class Cloud:
    """Starts release nodes on one etcd prefix and knows what the bus advertises."""

    url: str
    state: Path
    old: Path
    transport: rpclib.Transport
    nodes: list[Node] = field(default_factory=list)

    def start(self, tree: Path, service: str, host: str, *args: str) -> Node:
        node = Node(
            tree,
            f"services.{service}.service",
            f"{service}-{host}-{len(self.nodes)}",
            self.url,
            self.state,
            "--host",
            host,
            *args,
        )
        self.nodes.append(node)
        return node

    def conductor(self, tree: Path, host: str) -> Node:
        node = self.start(tree, "conductor", host, "--state-dir", str(self.state))
        self.wait_advert("conductor", host, node)
        return node

    def scheduler(self, host: str, *args: str, tree: Path | None = None) -> Node:
        node = self.start(tree or NEW, "scheduler", host, "--log-level", "INFO", *args)
        self.wait_advert("scheduler", host, node)
        return node

    def compute(self, tree: Path, host: str) -> Node:
        node = self.start(
            tree,
            "compute",
            host,
            *("--state-dir", str(self.state), "--image-dirs", str(self.state)),
            *("--libvirt-uri", "test:///default", "--heartbeat-interval", "2"),
        )
        self.wait_advert("compute", host, node)
        return node

    def advertised(self, topic: str, server: str, namespace: str | None = None) -> str | None:
        """The highest version 1.x ``server`` advertises on ``topic`` now (None: not live)."""
        view = self.transport.directory.view(self.transport.default_exchange, topic)
        for advert in view.live(server):
            version = advert.highest(namespace or topic, 1)
            return str(version) if version is not None else None
        return None

    def wait_advert(self, topic: str, server: str, node: Node) -> None:
        def up() -> bool:
            if node.proc.poll() is not None:
                raise AssertionError(f"{node.name} exited:\n{node.text()}")
            return self.advertised(topic, server) is not None

        wait_until(up, WAIT, f"{node.name} to advertise")

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


class BootLoop:
    """Boots instances one after another until stopped; each must reach ACTIVE.

    Every boot is made through the scheduler and waited for (ACTIVE or not).
    Once a boot is ACTIVE the one before it is deleted and its allocation
    released before the next boot, so exactly one instance holds resources
    when the scheduler places: spreading puts the next one on the other node,
    and the boots alternate between the two nodes. What each boot ended as,
    and on which host, is kept per upgrade step.
    """

    def __init__(self, transport: rpclib.Transport, image: Path) -> None:
        self.scheduler = SchedulerAPI(transport, timeout=30)
        self.conductor = ConductorAPI(transport, timeout=30)
        self.image = image
        self.step = "previous release"
        self.previous: str | None = None
        self.active: list[tuple[str, str]] = []  # (step, host)
        self.failures: list[str] = []
        self.in_flight = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="boot-loop", daemon=True)

    def __enter__(self) -> BootLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT * 2)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            step = self.step
            try:
                self._boot(f"up{n}", step)
            except Exception as exc:  # every failure is a finding: record it, keep booting
                self.failures.append(f"boot up{n} during {step!r}: {type(exc).__name__}: {exc}")

    def _boot(self, name: str, step: str) -> None:
        vm = self.scheduler.boot(
            {},
            name=name,
            vcpus=1,
            memory_mb=64,
            disk_gb=1,
            image=str(self.image),
            project_id="upgrade",
        )
        uuid = str(vm.uuid)
        self.in_flight = f"{name} ({uuid}) on {vm.host}, placed during {step!r}"
        poll_until(lambda: self._settled(uuid), SETTLE, f"{name} to settle")
        final = self.conductor.get_instance({}, uuid)
        if final.vm_state != "ACTIVE":
            self.failures.append(
                f"{name} during {step!r} on {final.host}: {final.vm_state} ({final.error_reason})"
            )
            return
        self.active.append((step, str(final.host)))
        if self.previous is not None:
            self.scheduler.delete({}, self.previous)
            poll_until(lambda: self._vcpus_used() == 1, SETTLE, "the delete to release")
        self.previous = uuid

    def _vcpus_used(self) -> int:
        hosts = self.conductor.allocation_candidates({}, 1, 1, 1)
        return sum(h["capacity"]["VCPU"] - h["free"]["VCPU"] for h in hosts)

    def _settled(self, uuid: str) -> bool:
        return self.conductor.get_instance({}, uuid).vm_state in ("ACTIVE", "ERROR")

    def enter(self, step: str) -> None:
        """Label the boots started from now on ``step``."""
        self.step = step

    def confirm(self, *hosts: str) -> None:
        """Wait until boots started in this step reached ACTIVE on each of ``hosts``."""
        current = self.step

        def booted() -> bool:
            if self.failures:
                raise AssertionError("boots failed:\n" + "\n".join(self.failures))
            done = [h for s, h in self.active if s == current]
            return len(done) >= BOOTS_PER_STEP and all(h in done for h in hosts)

        try:
            wait_until(booted, WAIT, f"boots to succeed during {current!r} on {hosts}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; failures: {self.failures}; last boot: {self.in_flight}"
            ) from None


def caps(node: Node, host: str) -> list[str]:
    """The caps the scheduler ``node`` logged for compute ``host``, in order."""
    return re.findall(rf"compute {host}: sending at version cap (\S+)", node.text())


@pytest.fixture
def cloud(etcd_url: str, tmp_path: Path, old_release: Path) -> Iterator[Cloud]:
    transport = rpclib.get_transport(etcd_url)
    made = Cloud(etcd_url, tmp_path, old_release, transport)
    try:
        yield made
    finally:
        made.stop_all()
        transport.close()


def test_cloud_upgraded_node_by_node_keeps_booting(cloud: Cloud) -> None:
    old, image = cloud.old, make_image(cloud.state)
    pins = cloud.state / "pins.toml"
    pins.write_text(f'[upgrade_levels]\ncompute = "{OLD_COMPUTE}"\n')

    # the previous release, everywhere
    cond_old = cloud.conductor(old, "cond1")
    sched_old = cloud.scheduler("sched1", tree=old)
    c1_old, c2_old = cloud.compute(old, "c1"), cloud.compute(old, "c2")
    assert cloud.advertised("compute", "c1") == cloud.advertised("compute", "c2") == OLD_COMPUTE
    assert COMPUTE_VERSION != OLD_COMPUTE  # this release's compute is newer

    with BootLoop(cloud.transport, image) as boots:
        boots.confirm("c1", "c2")

        boots.enter("conductor upgrade")
        cloud.conductor(NEW, "cond2")  # migrates the database while cond1 still serves
        cond_old.stop()
        boots.confirm("c1", "c2")

        boots.enter("scheduler upgrade, pinned")
        pinned = cloud.scheduler("sched2", "--config", str(pins))
        sched_old.stop()
        boots.enter("scheduler upgraded, pinned")  # from here on only sched2 places
        boots.confirm("c1", "c2")

        boots.enter("c1 upgrade")
        c1_old.stop()
        cloud.compute(NEW, "c1")
        assert cloud.advertised("compute", "c1") == COMPUTE_VERSION
        boots.enter("c1 upgraded, pin held")
        boots.confirm("c1", "c2")

        boots.enter("pin lifting")
        auto = cloud.scheduler("sched3")
        pinned.stop()
        boots.enter("pin lifted, c2 still old")  # from here on only sched3 places
        boots.confirm("c1", "c2")

        boots.enter("c2 upgrade")
        c2_old.stop()
        cloud.compute(NEW, "c2")
        assert cloud.advertised("compute", "c2") == COMPUTE_VERSION
        boots.enter("all upgraded")
        boots.confirm("c1", "c2")
    assert boots.failures == []

    # the pin held c1 at the old version after its upgrade; auto follows each node
    assert f"compute pinned at {OLD_COMPUTE} (upgrade_levels)" in pinned.text()
    assert set(caps(pinned, "c1")) == set(caps(pinned, "c2")) == {OLD_COMPUTE}
    assert "compute auto" in auto.text()
    assert caps(auto, "c1") == [COMPUTE_VERSION]
    assert caps(auto, "c2") == [OLD_COMPUTE, COMPUTE_VERSION]
