"""rpclib-cloud forget-host: an operator retires a compute node that is down (issue 13,
item 11): its service row, inventory and queue go; a node still up or still holding
instances is refused.

One embedded cloud (memory:// with one account per service) serves the module.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpclib.transports.base import Address
from rpclib.transports.memory import reset_bus
from services.allinone import Embedded, make_image, registered_computes, wait_until
from services.cli import Cloud, main
from services.common.accounts import CloudHosts
from services.compute.service import ComputeService

HOSTS = CloudHosts("conductor1", "scheduler1", "billing1", ("keeper", "retired"))


class Running:
    def __init__(self, services: Embedded, state: Path) -> None:
        self.services = services
        self.state = state
        self.image = make_image(state)
        self.cloud = Cloud(services.login("admin"), out=io.StringIO())

    def run(self, *args: str) -> int:
        return main(["--transport-url", self.services.admin_url, *args])

    def compute(self, host: str) -> ComputeService:
        return self.services.compute(host)

    def restart(self, host: str) -> None:
        """A new compute process for ``host`` in place of the stopped one."""
        self.services.restart_compute(host)

    def hosts(self) -> set[str]:
        services = self.cloud.conductor.client.call({}, "list_services")
        return {s["host"] for s in services}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("cloud")
    bus = f"t{uuid.uuid4().hex[:12]}"
    services = Embedded(f"memory://{bus}", state, "test:///default", hosts=HOSTS)
    services.start()
    try:
        running = Running(services, state)
        wait_until(lambda: registered_computes(running.cloud.conductor) == 2, 30, "computes")
        yield running
    finally:
        services.stop()
        reset_bus(bus)


def test_a_node_that_is_up_is_not_forgotten(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    assert running.run("forget-host", "keeper") == 1
    err = capsys.readouterr().err
    assert "keeper is up" in err and "stop its compute service first" in err
    assert "keeper" in running.hosts()


def test_a_node_with_instances_is_not_forgotten(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    vm = running.cloud.boot(
        "holder", vcpus=1, memory_mb=64, disk_gb=1, image=str(running.image), wait=30
    )
    running.compute(str(vm.host)).stop()
    try:
        assert running.run("forget-host", str(vm.host)) == 1
        assert "still has 1 instance(s)" in capsys.readouterr().err
        assert str(vm.host) in running.hosts()
    finally:
        running.restart(str(vm.host))
        running.cloud.delete(str(vm.uuid), wait=30)


def test_a_retired_node_loses_its_row_inventory_and_queue(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    running.compute("retired").stop()
    # the admin's account may not delete a compute node's queue: told how to proceed
    assert running.run("forget-host", "retired") == 1
    out, err = capsys.readouterr()
    assert "retired: service and inventory removed" in out
    assert "--queues-url" in err and err.count("\n") == 1
    assert "retired" not in running.hosts()
    assert "retired" not in {
        c["host"] for c in running.cloud.conductor.allocation_candidates({}, 1, 1, 1)
    }
    # with an account that may consume the queue (here: the node's own), it goes
    node_url = running.services.urls["compute-retired"]
    assert running.run("forget-host", "retired", "--queues-url", node_url) == 0
    assert "retired: queue rpclib/compute.retired removed" in capsys.readouterr().out
    bus = running.services.login("compute-retired")
    assert bus.driver.remove_server_queues(Address("rpclib", "compute", server="retired")) == []
