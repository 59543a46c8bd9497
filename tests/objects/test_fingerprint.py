"""Fingerprints catch schema and interface changes that forgot a version bump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rpclib.fingerprint import (
    assert_fingerprints,
    check_fingerprints,
    interface_fingerprints,
    object_fingerprints,
)
from rpclib.objects import Registry, VersionedObject
from rpclib.objects import fields as f
from rpclib.versioning import Version

REPO = Path(__file__).resolve().parents[2]


def registry_with(*classes: type[VersionedObject]) -> Registry:
    registry = Registry()
    for cls in classes:
        registry.register(cls)
    return registry


def make_flavor(version: str = "1.1", **extra_fields: f.Field) -> type[VersionedObject]:
    fields = {"name": f.String(), "vcpus": f.Integer(), **extra_fields}
    return type("Flavor", (VersionedObject,), {"VERSION": version, "fields": fields})


def fingerprint_of(cls: type[VersionedObject]) -> str:
    return object_fingerprints(registry_with(cls))[cls.obj_name()]


# --- object fingerprints ----------------------------------------------------------------


def test_object_fingerprint_is_version_dash_32_hex() -> None:
    version, _, digest = fingerprint_of(make_flavor()).partition("-")
    assert version == "1.1"
    assert len(digest) == 32
    int(digest, 16)


def test_object_fingerprint_is_stable_across_processes() -> None:
    code = textwrap.dedent(
        """
        from rpclib.fingerprint import object_fingerprints
        from rpclib.objects import Registry, VersionedObject, fields as f
        r = Registry()
        r.register(type("Flavor", (VersionedObject,), {"VERSION": "1.1", "fields": {
            "name": f.String(), "vcpus": f.Integer()}}))
        print(object_fingerprints(r)["Flavor"])
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == fingerprint_of(make_flavor())


def test_object_fingerprint_ignores_field_declaration_order() -> None:
    a = type("Flavor", (VersionedObject,), {"fields": {"a": f.String(), "b": f.Integer()}})
    b = type("Flavor", (VersionedObject,), {"fields": {"b": f.Integer(), "a": f.String()}})
    assert fingerprint_of(a) == fingerprint_of(b)


@pytest.mark.parametrize(
    "changed",
    [
        make_flavor(swap=f.Integer()),
        make_flavor(name=f.String(nullable=True)),
        make_flavor(vcpus=f.Float()),
        make_flavor(vcpus=f.Integer(default=1)),
        make_flavor(vcpus=f.Integer(since="1.1")),
        type("Flavor", (VersionedObject,), {"VERSION": "1.1", "fields": {"name": f.String()}}),
        type(
            "Flavor",
            (VersionedObject,),
            {"VERSION": "1.1", "fields": {"name": f.String(), "cpus": f.Integer()}},
        ),
    ],
    ids=["added", "nullable", "type", "default", "since", "removed", "renamed"],
)
def test_any_field_change_changes_the_hash(changed: type[VersionedObject]) -> None:
    assert fingerprint_of(changed) != fingerprint_of(make_flavor())


def test_overriding_obj_make_compatible_changes_the_hash() -> None:
    base = make_flavor()

    def obj_make_compatible(self: Any, primitive: dict[str, Any], target: Version) -> None:
        pass

    custom = type("Flavor", (base,), {"obj_make_compatible": obj_make_compatible})
    assert fingerprint_of(custom) != fingerprint_of(base)


def test_fingerprints_cover_every_registered_class() -> None:
    other = type("Other", (VersionedObject,), {"fields": {}})
    assert set(object_fingerprints(registry_with(make_flavor(), other))) == {"Flavor", "Other"}


# --- checking ---------------------------------------------------------------------------------


def test_field_change_without_version_bump_is_reported() -> None:
    expected = object_fingerprints(registry_with(make_flavor("1.3")))
    actual = object_fingerprints(registry_with(make_flavor("1.3", swap=f.Integer())))
    [problem] = check_fingerprints(actual, expected)
    assert "Flavor: fields changed but VERSION is still 1.3 — bump the version" in problem
    assert "python -m rpclib.fingerprint" in problem


def test_version_bump_with_field_change_asks_to_regenerate() -> None:
    expected = object_fingerprints(registry_with(make_flavor("1.3")))
    actual = object_fingerprints(registry_with(make_flavor("1.4", swap=f.Integer())))
    [problem] = check_fingerprints(actual, expected)
    assert "now at VERSION 1.4 (recorded 1.3)" in problem
    assert "regenerate" in problem


def test_version_bump_alone_asks_to_regenerate() -> None:
    expected = object_fingerprints(registry_with(make_flavor("1.3")))
    actual = object_fingerprints(registry_with(make_flavor("1.4")))
    [problem] = check_fingerprints(actual, expected)
    assert "VERSION changed from 1.3 to 1.4 with the same fields" in problem


def test_new_class_is_reported() -> None:
    expected = object_fingerprints(registry_with(make_flavor()))
    other = type("Other", (VersionedObject,), {"fields": {}})
    actual = object_fingerprints(registry_with(make_flavor(), other))
    [problem] = check_fingerprints(actual, expected)
    assert problem.startswith("Other: new, not in the recorded table")


def test_removed_class_is_reported() -> None:
    other = type("Other", (VersionedObject,), {"fields": {}})
    expected = object_fingerprints(registry_with(make_flavor(), other))
    actual = object_fingerprints(registry_with(make_flavor()))
    [problem] = check_fingerprints(actual, expected)
    assert problem.startswith("Other: recorded but no longer present")


def test_matching_tables_have_no_problems() -> None:
    table = object_fingerprints(registry_with(make_flavor()))
    assert check_fingerprints(table, dict(table)) == []


def test_assert_fingerprints_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "fingerprints.json"
    other = type("Other", (VersionedObject,), {"fields": {}})
    path.write_text(json.dumps(object_fingerprints(registry_with(make_flavor("1.3"), other))))
    actual = object_fingerprints(registry_with(make_flavor("1.3", swap=f.Integer())))
    with pytest.raises(AssertionError) as info:
        assert_fingerprints(actual, path)
    text = str(info.value)
    assert "2 fingerprint problem(s)" in text
    assert "Flavor: fields changed but VERSION is still 1.3" in text
    assert "Other: recorded but no longer present" in text
    assert f"--write {path}" in text


def test_assert_fingerprints_passes_on_a_match(tmp_path: Path) -> None:
    path = tmp_path / "fingerprints.json"
    table = object_fingerprints(registry_with(make_flavor()))
    path.write_text(json.dumps(table))
    assert_fingerprints(table, path)


def test_assert_fingerprints_explains_a_missing_table(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="no fingerprint table at .*create it with"):
        assert_fingerprints({}, tmp_path / "missing.json")


# --- interfaces ---------------------------------------------------------------------------------


class Target:
    def __init__(self, namespace: str | None = None, version: str = "1.0") -> None:
        self.namespace = namespace
        self.version = version


class ComputeV1:
    target = Target(namespace="compute", version="1.3")

    def boot(self, ctx: dict[str, Any], name: str, flavor: str = "small") -> str:
        return name

    def stop(self, ctx: dict[str, Any], name: str) -> None:
        pass

    def _helper(self) -> None:
        pass


class ComputeV1Changed(ComputeV1):
    def boot(self, ctx: dict[str, Any], name: str, flavor: str = "large") -> str:
        return name


def test_interface_key_is_namespace_at_version() -> None:
    class NoTarget:
        def ping(self, ctx: Any) -> None:
            pass

    table = interface_fingerprints([ComputeV1(), NoTarget()])
    assert set(table) == {"compute@1.3", "@1.0"}
    assert all(len(v) == 32 for v in table.values())


def test_interface_hash_ignores_private_names_and_the_target() -> None:
    class Extra(ComputeV1):
        target = Target(namespace="compute", version="1.3")
        _state = 1

        def _more(self) -> None:
            pass

    assert interface_fingerprints([Extra()]) == interface_fingerprints([ComputeV1()])


@pytest.mark.parametrize(
    "method_source",
    [
        "def boot(self, ctx, name, flavor='small', image=None): pass",
        "def boot(self, ctx, name, flavor='large'): pass",
        "def boot(self, ctx, name, *, flavor='small'): pass",
        "def boot(self, ctx, hostname, flavor='small'): pass",
        "def boot(self, ctx, name: int, flavor='small'): pass",
        "def reboot(self, ctx, name): pass",
    ],
)
def test_any_method_signature_change_changes_the_hash(method_source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(method_source, namespace)
    [(name, fn)] = [(k, v) for k, v in namespace.items() if k != "__builtins__"]
    changed = type("Changed", (ComputeV1,), {name: fn})
    assert interface_fingerprints([changed()]) != interface_fingerprints([ComputeV1()])


def test_interface_change_without_version_bump_is_reported() -> None:
    expected = interface_fingerprints([ComputeV1()])
    actual = interface_fingerprints([ComputeV1Changed()])
    [problem] = check_fingerprints(actual, expected)
    assert "interface compute 1.3: methods changed but the version is still 1.3" in problem


def test_endpoint_class_and_instance_fingerprint_alike() -> None:
    assert interface_fingerprints([ComputeV1]) == interface_fingerprints([ComputeV1()])


def test_default_values_without_stable_repr_still_fingerprint_stably() -> None:
    sentinel = object()

    class WithSentinel:
        def call(self, ctx: Any, value: object = sentinel) -> None:
            pass

    class WithOtherSentinel:
        def call(self, ctx: Any, value: object = object()) -> None:
            pass

    assert interface_fingerprints([WithSentinel()]) == interface_fingerprints([WithOtherSentinel()])


def test_two_endpoints_for_one_namespace_and_version_are_refused() -> None:
    with pytest.raises(ValueError, match="compute@1.3"):
        interface_fingerprints([ComputeV1(), ComputeV1Changed()])


# --- command line --------------------------------------------------------------------------------

MODULE = """
from typing import Any
from rpclib.objects import VersionedObject, fields, register


@register
class CliFlavor(VersionedObject):
    VERSION = "1.0"
    fields = {{"name": fields.String(){extra}}}


class Api:
    def ping(self, ctx: Any) -> None:
        pass


ENDPOINTS = [Api()]
"""


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "rpclib.fingerprint", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def write_module(tmp_path: Path, extra: str = "") -> None:
    (tmp_path / "cli_objects.py").write_text(MODULE.format(extra=extra))


def test_cli_write_then_check_passes(tmp_path: Path) -> None:
    write_module(tmp_path)
    table = tmp_path / "fingerprints.json"
    args = ["--objects", "cli_objects", "--endpoints", "cli_objects:ENDPOINTS"]
    written = run_cli(tmp_path, *args, "--write", str(table))
    assert written.returncode == 0, written.stderr
    recorded = json.loads(table.read_text())
    assert set(recorded) == {"CliFlavor", "@1.0"}
    checked = run_cli(tmp_path, *args, "--check", str(table))
    assert checked.returncode == 0, checked.stderr
    assert "match" in checked.stdout


def test_cli_check_fails_after_a_field_change_naming_the_fix(tmp_path: Path) -> None:
    write_module(tmp_path)
    table = tmp_path / "fingerprints.json"
    assert run_cli(tmp_path, "--objects", "cli_objects", "--write", str(table)).returncode == 0
    write_module(tmp_path, extra=', "size": fields.Integer()')
    checked = run_cli(tmp_path, "--objects", "cli_objects", "--check", str(table))
    assert checked.returncode == 1
    assert "CliFlavor: fields changed but VERSION is still 1.0" in checked.stderr
    assert f"python -m rpclib.fingerprint --objects cli_objects --write {table}" in checked.stderr


def test_cli_reports_an_unimportable_module(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--objects", "no_such_module", "--write", "x.json")
    assert result.returncode == 2
    assert "no_such_module" in result.stderr
