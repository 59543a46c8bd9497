"""Per-service version pins: where they come from, what they refuse, what clients send."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rpclib
from services.common import config as cfg
from services.compute.rpcapi import VERSION as COMPUTE
from services.compute.rpcapi import ComputeAPI
from services.objects import Flavor, Instance
from tests.rpc.helpers import wait_until
from tests.services.test_scheduler import OLD_OBJECTS

NAMES = ("transport_url", "upgrade_levels")
ROOT = Path(__file__).resolve().parents[2]


def load(argv: list[str], env: dict[str, str] | None = None) -> cfg.ServiceConfig:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, NAMES)
    return cfg.load("scheduler", parser.parse_args(argv), NAMES, environ=env or {})


def test_no_pin_means_auto_everywhere() -> None:
    assert load([]).upgrade_levels == {}


def test_pins_merge_per_service_flag_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "rpclib.toml"
    path.write_text(
        '[upgrade_levels]\ncompute = "1.0"\nconductor = "1.0"\nbilling = "1.0"\n'
        '[scheduler.upgrade_levels]\nbilling = "auto"\n'
    )
    env = {"RPCLIB_CONFIG": str(path), "RPCLIB_UPGRADE_LEVELS": "conductor=auto,scheduler=1.0"}
    config = load(["--upgrade-level", "compute=1.1", "--upgrade-level", "scheduler=1.1"], env)
    assert config.upgrade_levels == {
        "compute": "1.1",  # the flag over the file
        "conductor": "auto",  # the environment over the file
        "billing": "auto",  # the service's own table over the shared one
        "scheduler": "1.1",  # the flag over the environment
    }


@pytest.mark.parametrize(
    ("pin", "problem"),
    [
        ("nova=1.0", "unknown service 'nova' (one of billing, compute, conductor, scheduler)"),
        ("compute=one", "compute: 'one' is not a version"),
        ("compute=1.99", f"compute: '1.99' is above what this release speaks (compute {COMPUTE}"),
        ("compute=2.0", "compute: '2.0' is above what this release speaks"),
        ("compute", "'compute' is not SERVICE=VERSION"),
    ],
)
def test_a_bad_pin_in_the_environment_is_one_line_naming_it(pin: str, problem: str) -> None:
    with pytest.raises(cfg.ConfigError) as exc:
        load([], {"RPCLIB_UPGRADE_LEVELS": pin})
    message = str(exc.value)
    assert message.startswith("environment variable RPCLIB_UPGRADE_LEVELS: upgrade_levels: ")
    assert problem in message and "\n" not in message


def test_a_bad_pin_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rpclib.toml"
    path.write_text('[upgrade_levels]\ncompute = "1.99"\n')
    with pytest.raises(
        cfg.ConfigError, match=f"config file {path}: upgrade_levels: compute: '1.99'"
    ):
        load(["--config", str(path)])


def test_a_version_written_as_a_toml_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rpclib.toml"
    path.write_text("[upgrade_levels]\ncompute = 1.10\n")  # a float: 1.1, not 1.10
    with pytest.raises(cfg.ConfigError, match="compute: write the version as a string"):
        load(["--config", str(path)])


def test_a_service_started_with_a_bad_pin_exits_naming_the_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.scheduler.service", "--upgrade-level", "compute=7.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "rpclib-scheduler: error: argument --upgrade-level: compute: '7.0' is above what "
        f"this release speaks (compute {COMPUTE}; a pin must be 1.0 to {COMPUTE})"
    ]
    assert "Traceback" not in result.stderr


class RecordingCompute:
    """A compute node's endpoint at 1.1 that records the version each build arrived at."""

    target = rpclib.Target(namespace="compute", version="1.1")

    def __init__(self) -> None:
        self.builds: list[tuple[str, str | None]] = []

    def build_instance(
        self,
        ctx: dict[str, Any],
        instance: Instance,
        allocation: dict[str, Any],
        image: str,
        network: str | None = None,
    ) -> None:
        request = rpclib.current_request()
        assert request is not None
        self.builds.append((request.version, network))


def _instance() -> Instance:
    return Instance(
        uuid="6f1c3c1e-4a8e-4e4b-9a53-0d1f7a0a2b10",
        name="vm",
        project_id="p",
        user_id="u",
        flavor=Flavor(vcpus=1, memory_mb=64, disk_gb=1),
        image="img",
    )


@pytest.mark.parametrize(("cap", "sent"), [("auto", ("1.1", "net")), ("1.0", ("1.0", None))])
def test_a_pin_replaces_auto_for_builds_to_a_newer_node(
    transport: rpclib.Transport, cap: str, sent: tuple[str, str | None]
) -> None:
    node = RecordingCompute()
    server = rpclib.RPCServer(transport, rpclib.Target(topic="compute", server="c1"), [node])
    server.start()
    try:
        api = ComputeAPI(transport, version_cap=cap)
        api.build_instance({}, "c1", _instance(), {"VCPU": 1}, "img", network="net")
        wait_until(lambda: len(node.builds) == 1, what="the build")
    finally:
        server.stop()
        server.wait(10)
    assert node.builds == [sent]


class OldCompute:
    """A compute node of the previous release: interface 1.0, no ``network``."""

    target = rpclib.Target(namespace="compute", version="1.0")

    def __init__(self) -> None:
        self.builds: list[str] = []

    def build_instance(
        self, ctx: dict[str, Any], instance: Instance, allocation: dict[str, Any], image: str
    ) -> None:
        self.builds.append(image)


def test_a_pin_above_a_live_node_gets_its_builds_refused_and_dead_lettered(
    transport: rpclib.Transport,
) -> None:
    node = OldCompute()
    server = rpclib.RPCServer(transport, rpclib.Target(topic="compute", server="c1"), [node])
    server.start()
    try:
        ComputeAPI(transport, version_cap="1.1").build_instance(
            {}, "c1", _instance(), {"VCPU": 1}, "img"
        )
        wait_until(lambda: bool(transport.driver.dead_letters()), what="a dead letter")
        ComputeAPI(transport, version_cap="1.0").build_instance(
            {}, "c1", _instance(), {"VCPU": 1}, "img2"
        )
        wait_until(lambda: node.builds == ["img2"], what="the build at the pin")
    finally:
        server.stop()
        server.wait(10)
    [letter] = transport.driver.dead_letters()
    assert "1.1" in letter.reason and "1.0" in letter.reason


class OldObjectsCompute(OldCompute):
    """A node of a release before Instance 1.1: builds arrive in its 1.0 classes."""

    def build_instance(
        self, ctx: dict[str, Any], instance: Any, allocation: dict[str, Any], image: str
    ) -> None:
        self.builds.append(f"{type(instance).__name__} {instance.VERSION}")


def _old_objects_node(
    transport: rpclib.Transport, indirection: rpclib.RPCIndirection | None = None
) -> tuple[OldObjectsCompute, rpclib.RPCServer]:
    node = OldObjectsCompute()
    server = rpclib.RPCServer(
        transport,
        rpclib.Target(topic="compute", server="c1"),
        [node],
        serializer=rpclib.Serializer(OLD_OBJECTS, indirection=indirection),
    )
    server.start()
    return node, server


@pytest.mark.parametrize("cap", ["auto", "1.0"])
def test_objects_follow_the_advertised_versions_under_auto_and_under_a_pin(
    transport: rpclib.Transport, cap: str
) -> None:
    # A pin holds the interface version; objects still go at what the node advertises.
    node, server = _old_objects_node(transport)
    try:
        ComputeAPI(transport, version_cap=cap).build_instance(
            {}, "c1", _instance(), {"VCPU": 1}, "img"
        )
        wait_until(lambda: node.builds == ["InstanceV10 1.0"], what="the backported build")
        assert transport.driver.dead_letters() == []
    finally:
        server.stop()
        server.wait(10)


def test_a_pinned_build_reaches_an_old_node_that_asks_the_conductor_to_backport(
    transport: rpclib.Transport,
) -> None:
    backports = [rpclib.ObjectBackportEndpoint()]
    conductor = rpclib.RPCServer(
        transport, rpclib.Target(topic="conductor", server="cond"), backports
    )
    conductor.start()
    indirection = rpclib.RPCIndirection(transport, rpclib.Target(topic="conductor"))
    node, server = _old_objects_node(transport, indirection)
    try:
        ComputeAPI(transport, version_cap="1.0").build_instance(
            {}, "c1", _instance(), {"VCPU": 1}, "img"
        )
        wait_until(lambda: node.builds == ["InstanceV10 1.0"], what="the backported build")
    finally:
        for s in (server, conductor):
            s.stop()
            s.wait(10)


@pytest.mark.parametrize(("cap", "built"), [("auto", False), ("1.0", True)])
def test_builds_queued_for_a_node_never_seen_go_at_the_pin_or_uncapped(
    make_transport: Any, cap: str, built: bool
) -> None:
    """A scheduler started while an old node is down has never seen its advert."""
    node_bus, scheduler_bus = make_transport(), make_transport()
    node = OldCompute()
    target = rpclib.Target(topic="compute", server="c1")
    server = rpclib.RPCServer(node_bus, target, [node])
    server.start()  # declares the node's queue; then the node goes down for its upgrade
    server.stop()
    server.wait(10)
    ComputeAPI(scheduler_bus, version_cap=cap).build_instance(
        {}, "c1", _instance(), {"VCPU": 1}, "img", network="net"
    )
    server = rpclib.RPCServer(node_bus, target, [node])
    server.start()  # back, still on the old release
    try:
        if built:
            wait_until(lambda: node.builds == ["img"], what="the build at the pin")
        else:
            wait_until(lambda: bool(node_bus.driver.dead_letters()), what="the refusal")
            assert node.builds == []
    finally:
        server.stop()
        server.wait(10)


def test_a_compute_node_checking_its_conductor_pin_loads_no_database_module() -> None:
    probe = (
        "import sys\n"
        "from services.common import config as cfg\n"
        "cfg._convert('upgrade_levels', 'conductor=1.0', 'test')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlite3', 'sqlalchemy')"
        " or m.startswith(('services.billing', 'services.conductor.db'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
