"""Benchmark: rpclib versioned objects on the wire vs oslo.versionedobjects.

Builds the same ~25-field object (strings, ints, a datetime, a UUID, a nested
object, a dict, a list, a float) in both libraries and times, side by side in
one run with the repetitions interleaved:

* rpclib: encode, decode (full type checking), encode+decode, backport encode
* oslo:   obj_to_primitive+json.dumps, json.loads+obj_from_primitive, both,
          obj_to_primitive(target_version) (backport)
* floor:  a plain dict of the same data through msgpack packb+unpackb

Each case runs ``--rounds`` rounds of ``--number`` calls; the table shows the
median and the best per-call time over the rounds, and oslo/rpclib ratios of
the medians. oslo.versionedobjects is only needed here: run via ``bench/run objects``
(which builds ``bench/.venv``), or ``PYTHONPATH=. python bench/bench_objects.py``
in an environment that has msgpack and oslo.versionedobjects.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import timeit
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    with warnings.catch_warnings():  # oslo pulls in eventlet, which warns on import
        warnings.simplefilter("ignore")
        from oslo_versionedobjects import base as ovo_base
        from oslo_versionedobjects import fields as ovo_fields
except ImportError:
    sys.exit(
        "bench_objects.py needs oslo.versionedobjects, which is not importable here.\n"
        "Run it through the bench environment: bench/run objects\n"
        "(bench/run creates bench/.venv with oslo.versionedobjects and msgpack)."
    )

import msgpack

from rpclib.objects import Registry, VersionedObject
from rpclib.objects import fields as f
from rpclib.serializer import Serializer

# --- rpclib ---------------------------------------------------------------------

REGISTRY = Registry()


@REGISTRY.register
class Flavor(VersionedObject):
    VERSION = "1.1"
    fields = {
        "id": f.Integer(),
        "name": f.String(),
        "vcpus": f.Integer(),
        "memory_mb": f.Integer(),
        "root_gb": f.Integer(),
        "is_public": f.Boolean(),
        "swap": f.Integer(default=0, since="1.1"),
    }


@REGISTRY.register
class Instance(VersionedObject):
    VERSION = "1.3"
    fields = {
        "id": f.Integer(),
        "uuid": f.UUID(),
        "user_id": f.String(),
        "project_id": f.String(),
        "hostname": f.String(),
        "host": f.String(nullable=True),
        "node": f.String(nullable=True),
        "image_ref": f.String(),
        "kernel_id": f.String(),
        "vm_state": f.String(),
        "task_state": f.String(nullable=True),
        "power_state": f.Integer(),
        "memory_mb": f.Integer(),
        "vcpus": f.Integer(),
        "root_gb": f.Integer(),
        "ephemeral_gb": f.Integer(),
        "launch_index": f.Integer(),
        "display_name": f.String(),
        "display_description": f.String(),
        "locked": f.Boolean(),
        "created_at": f.DateTime(),
        "flavor": f.Object("Flavor"),
        "metadata": f.Dict(f.String()),
        "tags": f.List(f.String()),
        "progress": f.Float(since="1.3"),
    }


# --- oslo.versionedobjects -----------------------------------------------------


@ovo_base.VersionedObjectRegistry.register
class OsloFlavor(ovo_base.VersionedObject):
    VERSION = "1.1"
    fields = {
        "id": ovo_fields.IntegerField(),
        "name": ovo_fields.StringField(),
        "vcpus": ovo_fields.IntegerField(),
        "memory_mb": ovo_fields.IntegerField(),
        "root_gb": ovo_fields.IntegerField(),
        "is_public": ovo_fields.BooleanField(),
        "swap": ovo_fields.IntegerField(default=0),
    }

    def obj_make_compatible(self, primitive: dict[str, Any], target_version: str) -> None:
        super().obj_make_compatible(primitive, target_version)
        if tuple(int(p) for p in target_version.split(".")) < (1, 1):
            primitive.pop("swap", None)


@ovo_base.VersionedObjectRegistry.register
class OsloInstance(ovo_base.VersionedObject):
    VERSION = "1.3"
    fields = {
        "id": ovo_fields.IntegerField(),
        "uuid": ovo_fields.UUIDField(),
        "user_id": ovo_fields.StringField(),
        "project_id": ovo_fields.StringField(),
        "hostname": ovo_fields.StringField(),
        "host": ovo_fields.StringField(nullable=True),
        "node": ovo_fields.StringField(nullable=True),
        "image_ref": ovo_fields.StringField(),
        "kernel_id": ovo_fields.StringField(),
        "vm_state": ovo_fields.StringField(),
        "task_state": ovo_fields.StringField(nullable=True),
        "power_state": ovo_fields.IntegerField(),
        "memory_mb": ovo_fields.IntegerField(),
        "vcpus": ovo_fields.IntegerField(),
        "root_gb": ovo_fields.IntegerField(),
        "ephemeral_gb": ovo_fields.IntegerField(),
        "launch_index": ovo_fields.IntegerField(),
        "display_name": ovo_fields.StringField(),
        "display_description": ovo_fields.StringField(),
        "locked": ovo_fields.BooleanField(),
        "created_at": ovo_fields.DateTimeField(),
        "flavor": ovo_fields.ObjectField("OsloFlavor"),
        "metadata": ovo_fields.DictOfStringsField(),
        "tags": ovo_fields.ListOfStringsField(),
        "progress": ovo_fields.FloatField(),
    }

    def obj_make_compatible(self, primitive: dict[str, Any], target_version: str) -> None:
        super().obj_make_compatible(primitive, target_version)
        if tuple(int(p) for p in target_version.split(".")) < (1, 3):
            primitive.pop("progress", None)


# --- data -------------------------------------------------------------------------

FLAVOR = {
    "id": 7,
    "name": "m1.small",
    "vcpus": 2,
    "memory_mb": 2048,
    "root_gb": 20,
    "is_public": True,
    "swap": 512,
}
INSTANCE = {
    "id": 4242,
    "uuid": uuid.UUID("6f1e3a52-8f0e-4a8e-9a55-8d1f2a1c9b01"),
    "user_id": "a" * 32,
    "project_id": "b" * 32,
    "hostname": "web-01",
    "host": "compute-17.example.org",
    "node": "compute-17",
    "image_ref": "c6a1e0b2-0c8e-4e5f-8d2a-2b0f8e1c3d4e",
    "kernel_id": "",
    "vm_state": "active",
    "task_state": None,
    "power_state": 1,
    "memory_mb": 2048,
    "vcpus": 2,
    "root_gb": 20,
    "ephemeral_gb": 0,
    "launch_index": 0,
    "display_name": "web server",
    "display_description": "serves the web",
    "locked": False,
    "created_at": dt.datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=dt.UTC),
    "metadata": {"role": "web", "tier": "frontend", "owner": "team-a"},
    "tags": ["prod", "web", "eu-west"],
    "progress": 42.5,
}


def build_rpclib() -> Instance:
    return Instance(**INSTANCE, flavor=Flavor(**FLAVOR))


def build_oslo() -> OsloInstance:
    values = dict(INSTANCE, uuid=str(INSTANCE["uuid"]))
    return OsloInstance(flavor=OsloFlavor(**FLAVOR), **values)


def build_plain() -> dict[str, Any]:
    values = dict(INSTANCE, uuid=str(INSTANCE["uuid"]))
    values["created_at"] = INSTANCE["created_at"].isoformat()
    values["flavor"] = dict(FLAVOR)
    return values


# --- measurement --------------------------------------------------------------------


def measure(
    cases: dict[str, Callable[[], object]], rounds: int, number: int
) -> dict[str, list[float]]:
    """Per-call seconds of each case, one sample per round, cases interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(timeit.timeit(fn, number=number) / number)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)

    serializer = Serializer(REGISTRY)
    manifest = {"Instance": "1.2", "Flavor": "1.0"}
    obj = build_rpclib()
    wire = serializer.dumps(obj)
    assert serializer.loads(wire) == obj
    backported = serializer.loads(serializer.dumps(obj, manifest))
    assert not backported.obj_attr_is_set("progress")
    assert not backported.flavor.obj_attr_is_set("swap")

    oslo = build_oslo()
    oslo_cls = ovo_base.VersionedObject
    oslo_text = json.dumps(oslo.obj_to_primitive())
    oslo_back = oslo_cls.obj_from_primitive(json.loads(oslo_text))
    assert oslo_back.display_name == oslo.display_name
    oslo_manifest = {"OsloInstance": "1.2", "OsloFlavor": "1.0"}
    prim = oslo.obj_to_primitive(target_version="1.2", version_manifest=oslo_manifest)
    assert "progress" not in prim["versioned_object.data"]
    assert "swap" not in prim["versioned_object.data"]["flavor"]["versioned_object.data"]

    plain = build_plain()
    packb, unpackb = msgpack.packb, msgpack.unpackb

    cases: dict[str, Callable[[], object]] = {
        "rpclib encode": lambda: serializer.dumps(obj),
        "rpclib decode": lambda: serializer.loads(wire),
        "rpclib encode+decode": lambda: serializer.loads(serializer.dumps(obj)),
        "rpclib backport": lambda: serializer.dumps(obj, manifest),
        "oslo encode": lambda: json.dumps(oslo.obj_to_primitive()),
        "oslo decode": lambda: oslo_cls.obj_from_primitive(json.loads(oslo_text)),
        "oslo encode+decode": lambda: oslo_cls.obj_from_primitive(
            json.loads(json.dumps(oslo.obj_to_primitive()))
        ),
        "oslo backport": lambda: oslo.obj_to_primitive(
            target_version="1.2", version_manifest=oslo_manifest
        ),
        "msgpack plain dict roundtrip": lambda: unpackb(packb(plain)),
    }
    for fn in cases.values():  # warm up
        fn()
    samples = measure(cases, args.rounds, args.number)
    median = {name: statistics.median(s) * 1e6 for name, s in samples.items()}
    best = {name: min(s) * 1e6 for name, s in samples.items()}
    ratios = {
        what: median[f"oslo {what}"] / median[f"rpclib {what}"]
        for what in ("encode", "decode", "encode+decode", "backport")
    }

    if args.json:
        print(json.dumps({"median_us": median, "best_us": best, "ratios": ratios}, indent=2))
        return 0
    python = sys.version.split()[0]
    print(f"{args.rounds} interleaved rounds x {args.number} calls; Python {python}")
    print(f"wire size: rpclib {len(wire)} bytes, oslo JSON {len(oslo_text)} bytes\n")
    print(f"{'operation':<16}{'rpclib us':>12}{'oslo us':>12}{'oslo/rpclib':>14}")
    for what in ("encode", "decode", "encode+decode", "backport"):
        print(
            f"{what:<16}{median[f'rpclib {what}']:>12.1f}{median[f'oslo {what}']:>12.1f}"
            f"{ratios[what]:>13.1f}x"
        )
    floor = median["msgpack plain dict roundtrip"]
    print(
        f"\nfloor: plain dict msgpack roundtrip {floor:.1f} us "
        f"(rpclib encode+decode is {median['rpclib encode+decode'] / floor:.1f}x the floor)"
    )
    print("\nbest-of-rounds (us): " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
