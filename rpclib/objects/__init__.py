"""Versioned objects: typed records that evolve by version and backport on the wire.

``fields`` holds the field types; :class:`VersionedObject` is the base class;
:func:`register` adds a class to the default :class:`Registry`, which is what
a :class:`rpclib.serializer.Serializer` decodes with.
"""

from rpclib.objects import fields
from rpclib.objects.base import Registry, VersionedObject, default_registry, register

__all__ = ["Registry", "VersionedObject", "default_registry", "fields", "register"]
