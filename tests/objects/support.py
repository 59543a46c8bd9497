"""Object classes for the versioned-object tests, each set in its own Registry.

``old`` and ``new`` model two releases of the same service: ``new`` adds
fields (and minor versions) that ``old`` does not know yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rpclib.objects import Registry, VersionedObject
from rpclib.objects import fields as f
from rpclib.serializer import Serializer
from rpclib.versioning import Version


@dataclass
class Release:
    """One release's registry and classes (looked up by name)."""

    registry: Registry

    def __getattr__(self, name: str) -> Any:
        return self.registry.get(name)

    def serializer(self, **kwargs: Any) -> Serializer:
        return Serializer(self.registry, **kwargs)


def make_release(*, new: bool) -> Release:
    """Flavor, Instance (holding a Flavor), Host (holding Instances) and Cell (holding Hosts)."""
    registry = Registry()

    @registry.register
    class Flavor(VersionedObject):
        VERSION = "1.2" if new else "1.1"
        fields = {
            "name": f.String(),
            "vcpus": f.Integer(),
            "memory_mb": f.Integer(),
            "swap": f.Integer(default=0, since="1.1"),
            **({"rxtx": f.Float(default=1.0, since="1.2")} if new else {}),
        }

    @registry.register
    class Instance(VersionedObject):
        VERSION = "1.3" if new else "1.2"
        fields = {
            "uuid": f.UUID(),
            "hostname": f.String(),
            "host": f.String(nullable=True, default=None),
            "flavor": f.Object("Flavor", nullable=True, default=None),
            "tags": f.List(f.String(), default=[]),
            "metadata": f.Dict(f.String(), default={}, since="1.1"),
            "locked": f.Boolean(default=False, since="1.2"),
            **({"progress": f.Integer(nullable=True, default=None, since="1.3")} if new else {}),
        }

        def obj_make_compatible(self, primitive: dict[str, Any], target_version: Version) -> None:
            if target_version < (1, 2) and primitive.get("host") is None:
                primitive.pop("host", None)  # 1.1 receivers want host absent, not None

    @registry.register
    class Host(VersionedObject):
        VERSION = "1.0"
        fields = {
            "name": f.String(),
            "instances": f.List(f.Object("Instance"), default=[]),
        }

    @registry.register
    class Cell(VersionedObject):
        VERSION = "1.0"
        fields = {
            "name": f.String(),
            "hosts": f.Dict(f.Object("Host"), default={}),
            "primary": f.Object("Host", nullable=True, default=None),
        }

    return Release(registry)
