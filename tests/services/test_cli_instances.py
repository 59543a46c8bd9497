"""rpclib-cloud names instances as ``list`` shows them, refuses hopeless boots before
creating anything, deletes what was never placed, and its own help examples work.

One embedded cloud (memory://, SQLite, libvirt's test driver) serves the whole module.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rpclib.transports.memory import reset_bus
from services import cli
from services.allinone import Embedded, make_image, registered_computes, wait_until
from services.cli import main
from services.conductor.rpcapi import ConductorAPI
from services.objects import Instance


class CloudUnderTest:
    def __init__(self, url: str, images: Path, conductor: ConductorAPI) -> None:
        self.url = url
        self.images = images
        self.conductor = conductor

    def run(self, *args: str) -> int:
        return main(["--transport-url", self.url, *args])

    def instances(self) -> list[Instance]:
        return self.conductor.list_instances({}, None, True)

    def named(self, name: str) -> list[Instance]:
        return [i for i in self.instances() if i.name == name]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudUnderTest]:
    state = tmp_path_factory.mktemp("cloud")
    bus = f"t{uuid.uuid4().hex[:12]}"
    running = Embedded(f"memory://{bus}", state, "test:///default")
    running.start()
    try:
        conductor = ConductorAPI(running.login("admin"))
        wait_until(lambda: registered_computes(conductor) == 2, 30, "compute nodes")
        make_image(state)
        yield CloudUnderTest(running.admin_url, state, conductor)
    finally:
        running.stop()
        reset_bus(bus)


def boot(cloud: CloudUnderTest, name: str, *extra: str) -> int:
    image = str(cloud.images / "tiny.qcow2")
    return cloud.run("boot", name, "--memory", "64", "--image", image, *extra)


# --- naming instances (issue 13, item 4) ---------------------------------------------


def test_show_and_delete_take_the_short_uuid_that_list_prints(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert boot(cloud, "short1") == 0
    capsys.readouterr()
    assert cloud.run("list") == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if " short1 " in line]
    short = row.split()[0]
    assert len(short) == 8
    assert cloud.run("show", short) == 0
    assert "short1" in capsys.readouterr().out
    assert cloud.run("delete", short) == 0
    assert "short1: DELETED" in capsys.readouterr().out


def test_show_and_delete_take_a_unique_name(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert boot(cloud, "byname") == 0
    assert cloud.run("show", "byname") == 0
    assert "byname" in capsys.readouterr().out
    assert cloud.run("delete", "byname") == 0
    assert "byname: DELETED" in capsys.readouterr().out


def test_an_ambiguous_name_is_one_error_listing_the_candidates(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert boot(cloud, "twin") == 0
    assert boot(cloud, "twin") == 0
    capsys.readouterr()
    assert cloud.run("delete", "twin") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "'twin' matches 2 instances" in err
    for twin in cloud.named("twin"):
        assert str(twin.uuid) in err
        assert twin.vm_state == "ACTIVE"  # neither was touched


def test_an_unknown_name_is_one_error(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cloud.run("show", "nosuchvm") == 1
    err = capsys.readouterr().err
    assert "no instance has the name or UUID prefix 'nosuchvm'" in err and err.count("\n") == 1


def test_an_instance_that_was_never_placed_can_be_deleted(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(cloud.images / "tiny.qcow2")
    assert cloud.run("boot", "unplaced", "--vcpus", "4096", "--image", image) == 1
    (unplaced,) = cloud.named("unplaced")
    assert (unplaced.vm_state, unplaced.host) == ("ERROR", None)
    capsys.readouterr()
    assert cloud.run("delete", "unplaced") == 0
    assert "unplaced: DELETED" in capsys.readouterr().out
    (deleted,) = cloud.named("unplaced")
    assert deleted.vm_state == "DELETED" and deleted.deleted_at is not None


# --- hopeless boots are refused before anything is created (item 8) ------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is not a valid instance name"),
        ("x" * 300, "is not a valid instance name"),
        ("../../etc/passwd", "is not a valid instance name"),
        ("a/b", "is not a valid instance name"),
    ],
    ids=["empty", "huge", "path", "slash"],
)
def test_a_bad_name_is_refused_and_nothing_is_created(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str], name: str, problem: str
) -> None:
    before = len(cloud.instances())
    assert boot(cloud, name) == 1
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
    assert len(cloud.instances()) == before


def test_a_missing_image_is_refused_and_nothing_is_created(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(cloud.instances())
    missing = cloud.images / "nope.qcow2"
    assert cloud.run("boot", "noimage", "--image", str(missing)) == 1
    err = capsys.readouterr().err
    assert f"image {missing}: no such file" in err and err.count("\n") == 1
    assert len(cloud.instances()) == before


def test_an_image_outside_the_allowed_directories_is_refused_and_nothing_is_created(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = len(cloud.instances())
    elsewhere = shutil.copy(cloud.images / "tiny.qcow2", tmp_path / "elsewhere.qcow2")
    assert cloud.run("boot", "forbidden", "--image", str(elsewhere)) == 1
    err = capsys.readouterr().err
    assert "local images must be under" in err and err.count("\n") == 1
    assert len(cloud.instances()) == before


def test_the_help_examples_work(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The examples name the image relative to where the user stands.
    shutil.copy(cloud.images / "tiny.qcow2", cloud.images / "cirros.qcow2")
    monkeypatch.chdir(cloud.images)
    home = cloud.images / "home"  # the user's key, where the example names it
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate().public_key()
    (home / ".ssh" / "id_ed25519.pub").write_bytes(
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    monkeypatch.setenv("HOME", str(home))
    (cloud.images / "cloud-config.yaml").write_text("#cloud-config\nhostname: vm1\n")
    assert cli.__doc__ is not None
    examples = [
        line.split()[1:]
        for line in cli.__doc__.splitlines()
        if line.strip().startswith("rpclib-cloud ")
    ]
    assert [e[0] for e in examples] == ["boot", "list", "show", "delete", "usage"]
    for example in examples:
        assert cloud.run(*example) == 0, (example, capsys.readouterr())
    assert "vm1: DELETED" in capsys.readouterr().out


def test_usage_since_a_future_time_is_one_clear_error(
    cloud: CloudUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cloud.run("usage", "--since", "2999-01-01T00:00:00+00:00") == 1
    err = capsys.readouterr().err
    assert "--since 2999-01-01T00:00:00+00:00 is not before --until" in err
    assert err.count("\n") == 1
