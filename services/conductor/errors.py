"""Errors of the conductor's database layer.

Each error keeps its facts as plain positional arguments (``exc.args``) and
builds its message from them, so rpclib can rebuild it on a caller that allows
this module (``allowed_remote_exmods``) with the same fields.
"""

from __future__ import annotations


class ConductorDBError(Exception):
    """Base of every error this package raises on purpose."""


class NotFound(ConductorDBError, LookupError):
    """A named record does not exist."""


class ServiceNotFound(NotFound):
    def __init__(self, host: str, binary: str) -> None:
        super().__init__(host, binary)
        self.host = host
        self.binary = binary

    def __str__(self) -> str:
        return f"no service {self.binary!r} registered on host {self.host!r}"


class ProviderNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no resource provider named {self.name!r}"


class InstanceNotFound(NotFound):
    def __init__(self, instance_uuid: str) -> None:
        super().__init__(instance_uuid)
        self.instance_uuid = instance_uuid

    def __str__(self) -> str:
        return f"no instance {self.instance_uuid}"


class InstanceExists(ConductorDBError):
    def __init__(self, instance_uuid: str) -> None:
        super().__init__(instance_uuid)
        self.instance_uuid = instance_uuid

    def __str__(self) -> str:
        return f"instance {self.instance_uuid} already exists"


class ClaimError(ConductorDBError):
    """A claim was not made; nothing was allocated."""


class NoCapacity(ClaimError):
    """The provider cannot fit the request (checked against committed usage)."""

    def __init__(self, provider: str, resource_class: str, reason: str) -> None:
        super().__init__(provider, resource_class, reason)
        self.provider = provider
        self.resource_class = resource_class
        self.reason = reason

    def __str__(self) -> str:
        return f"provider {self.provider!r} cannot fit {self.resource_class}: {self.reason}"


class ProviderConflict(ConductorDBError):
    """The provider kept changing concurrently (generation conflicts) on every attempt."""

    def __init__(self, provider: str, attempts: int) -> None:
        super().__init__(provider, attempts)
        self.provider = provider
        self.attempts = attempts

    def __str__(self) -> str:
        return (
            f"provider {self.provider!r} changed concurrently during each of "
            f"{self.attempts} attempts; try again"
        )


class ClaimConflict(ProviderConflict, ClaimError):
    """A claim lost the generation race on every attempt; nothing was allocated."""


class InventoryInUse(ConductorDBError):
    """An inventory cannot be removed while allocations use it."""

    def __init__(self, provider: str, resource_classes: str) -> None:
        super().__init__(provider, resource_classes)
        self.provider = provider
        self.resource_classes = resource_classes

    def __str__(self) -> str:
        return (
            f"provider {self.provider!r} still has allocations of {self.resource_classes}; "
            "their inventory cannot be removed"
        )


class WrongHost(ConductorDBError):
    """An instance update came from a host the instance is not placed on."""

    retryable = False  # a forged or misdirected update never becomes valid: dead-letter it

    def __init__(self, instance_uuid: str, host: str, placed_on: str | None) -> None:
        super().__init__(instance_uuid, host, placed_on)
        self.instance_uuid = instance_uuid
        self.host = host
        self.placed_on = placed_on

    def __str__(self) -> str:
        where = f"placed on {self.placed_on!r}" if self.placed_on else "not placed on any host"
        return f"update for instance {self.instance_uuid} from host {self.host!r} refused: {where}"


class HostInUse(ConductorDBError):
    """A compute host cannot be forgotten while instances are on it."""

    def __init__(self, host: str, instances: int) -> None:
        super().__init__(host, instances)
        self.host = host
        self.instances = instances

    def __str__(self) -> str:
        return (
            f"host {self.host!r} still has {self.instances} instance(s) that are not DELETED; "
            "delete them first"
        )
