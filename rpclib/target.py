"""Targets: where a message goes and which interface it speaks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rpclib.versioning import parse_version


@dataclass(frozen=True, slots=True)
class Target:
    """Names exchange, topic, server, namespace, version and fanout.

    Clients use it to address messages; servers to say where they listen;
    endpoints (``endpoint.target``) to say which namespace and version they
    implement. ``exchange=None`` means the transport's default exchange.
    """

    exchange: str | None = None
    topic: str | None = None
    server: str | None = None
    namespace: str | None = None
    version: str | None = None
    fanout: bool = False

    def __post_init__(self) -> None:
        for name in ("exchange", "topic", "server", "namespace"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"Target.{name} must be a non-empty string or None, got {value!r}")
        if self.version is not None:
            parse_version(self.version)
        if self.fanout and self.server is not None:
            raise ValueError("a Target is either fanout or directed to a server, not both")

    def __call__(self, **overrides: Any) -> Target:
        """A copy with ``overrides`` applied."""
        return replace(self, **overrides)
