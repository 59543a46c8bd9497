"""A compute node that is down: the scheduler places elsewhere at once (its advert is
gone from the bus), and the user command says what it waits for and that the node is down.

One embedded cloud serves the module; each test stops a compute node and starts it again.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpclib.transports.memory import reset_bus
from services.allinone import Embedded, make_image, registered_computes, wait_until
from services.cli import Cloud, main
from services.compute.service import ComputeService


class Running:
    def __init__(self, services: Embedded, state: Path) -> None:
        self.services = services
        self.state = state
        self.image = make_image(state)
        self.cloud = Cloud(services.login("admin"), out=io.StringIO())

    def compute(self, host: str) -> ComputeService:
        return self.services.compute(host)

    def stop_compute(self, host: str) -> None:
        self.compute(host).stop()

    def start_compute(self, host: str) -> None:
        """A new compute process for ``host`` (it takes over the stopped one's queue)."""
        self.services.restart_compute(host)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("cloud")
    bus = f"t{uuid.uuid4().hex[:12]}"
    services = Embedded(f"memory://{bus}", state, "test:///default")
    services.start()
    try:
        running = Running(services, state)
        wait_until(lambda: registered_computes(running.cloud.conductor) == 2, 30, "computes")
        yield running
    finally:
        services.stop()
        reset_bus(bus)


@pytest.fixture
def compute2_down(running: Running) -> Iterator[str]:
    running.stop_compute("compute2")
    yield "compute2"
    running.start_compute("compute2")


def test_boots_go_to_the_nodes_that_are_up(running: Running, compute2_down: str) -> None:
    # compute2 still has its service row and inventory (it is within any heartbeat
    # window), and spreading would put every other instance there.
    booted = [
        running.cloud.boot(
            f"spread{n}", vcpus=1, memory_mb=64, disk_gb=1, image=str(running.image), wait=30
        )
        for n in range(3)
    ]
    assert [(i.host, i.vm_state) for i in booted] == [("compute1", "ACTIVE")] * 3


def test_delete_on_a_down_node_shows_deleting_warns_and_gives_up_after_its_timeout(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = running.cloud.boot(
        "victim", vcpus=1, memory_mb=64, disk_gb=1, image=str(running.image), wait=30
    )
    running.stop_compute(str(vm.host))
    try:
        url = ["--transport-url", running.services.admin_url]
        assert main([*url, "delete", "victim", "--timeout", "2"]) == 1
        out, err = capsys.readouterr()
        assert f"victim: deleting on {vm.host}" in out
        assert f"waiting for {vm.host} to delete it" in out
        assert f"victim: warning: {vm.host} is down" in out
        assert f"still ACTIVE after 2s, waiting for {vm.host} to delete it" in err
        assert main([*url, "list"]) == 0
        (row,) = [line for line in capsys.readouterr().out.splitlines() if " victim " in line]
        assert "deleting" in row.split()
    finally:
        running.start_compute(str(vm.host))
    # the delete waited in the node's queue; the node takes it when it is back
    wait_until(
        lambda: running.cloud.conductor.get_instance({}, str(vm.uuid)).vm_state == "DELETED",
        30,
        "the queued delete",
    )


def test_no_valid_host_names_the_nodes_that_fit_but_are_down(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    running.stop_compute("compute1")
    running.stop_compute("compute2")
    try:
        url = ["--transport-url", running.services.admin_url]
        assert main([*url, "boot", "nowhere", "--image", str(running.image)]) == 1
        err = capsys.readouterr().err
        assert "compute1, compute2 would fit but are down" in err
    finally:
        running.start_compute("compute1")
        running.start_compute("compute2")
