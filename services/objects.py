"""The versioned objects the reference services send each other.

Instance and Flavor travel in full (the scheduler casts the whole Instance to
compute), so each change to their fields bumps VERSION, declares ``since`` on
added fields, and regenerates the fingerprint table
(``python -m rpclib.fingerprint --objects services.objects --write
tests/services/object_hashes.json``); the test in tests/services fails until
that is done. Older nodes get them backported automatically.

Version history:

- Flavor 1.0: vcpus, memory_mb, disk_gb, name. 1.1: swap_mb.
- Instance 1.0: identity, placement, flavor, image, states, timestamps,
  sequence. 1.1: metadata (user key/value pairs). 1.2: key_data (the SSH
  public key the metadata service gives the guest) and user_data (base64,
  as Nova's), both None when not given.
"""

from __future__ import annotations

from rpclib import VersionedObject, fields, register

VM_STATES = ("BUILDING", "ACTIVE", "STOPPED", "PAUSED", "SUSPENDED", "ERROR", "DELETED")


@register
class Flavor(VersionedObject):
    """The size of an instance."""

    VERSION = "1.1"
    fields = {
        "name": fields.String(default="custom"),
        "vcpus": fields.Integer(),
        "memory_mb": fields.Integer(),
        "disk_gb": fields.Integer(),
        "swap_mb": fields.Integer(default=0, since="1.1"),
    }


@register
class Instance(VersionedObject):
    """A virtual machine, as the services pass it around."""

    VERSION = "1.2"
    fields = {
        "uuid": fields.UUID(),
        "name": fields.String(),
        "project_id": fields.String(),
        "user_id": fields.String(),
        "host": fields.String(nullable=True, default=None),
        "flavor": fields.Object("Flavor"),
        "image": fields.String(),
        "vm_state": fields.Enum(VM_STATES, default="BUILDING"),
        "task_state": fields.String(nullable=True, default=None),
        "ip_address": fields.String(nullable=True, default=None),
        "error_reason": fields.String(nullable=True, default=None),
        "created_at": fields.DateTime(nullable=True, default=None),
        "launched_at": fields.DateTime(nullable=True, default=None),
        "deleted_at": fields.DateTime(nullable=True, default=None),
        "sequence": fields.Integer(default=0),
        "metadata": fields.Dict(fields.String(), default={}, since="1.1"),
        "key_data": fields.String(nullable=True, default=None, since="1.2"),
        "user_data": fields.String(nullable=True, default=None, since="1.2"),
    }
