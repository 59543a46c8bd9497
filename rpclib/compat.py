"""Downgrading calls for older servers: a method's argument history.

Declare once, next to the client API, which interface version introduced a
method and each argument added later::

    BUILD = rpclib.Method("build_instance", since="1.0", args={"request_spec": "1.3"})
    client.prepare(server=host).cast(ctx, BUILD, instance=inst, request_spec=spec)

The client then sends at the highest version its cap allows (never above the
newest version this method knows) and drops the arguments that version does
not have. A cap below ``since`` raises :class:`~rpclib.exceptions.VersionCapError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rpclib.versioning import Version, parse_version

LOG = logging.getLogger("rpclib.compat")


@dataclass(frozen=True)
class Method:
    """An RPC method name with the versions that introduced it and its later arguments."""

    name: str
    since: str = "1.0"
    args: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        since = parse_version(self.since)
        for arg, version in self.args.items():
            v = parse_version(version)
            if v.major != since.major or v < since:
                raise ValueError(
                    f"{self.name}: argument {arg!r} added in {version}, "
                    f"before the method itself ({self.since}) or in another major"
                )

    @property
    def newest(self) -> Version:
        """The newest version whose signature this declaration knows."""
        return max([parse_version(self.since), *(parse_version(v) for v in self.args.values())])

    def version_for(self, cap: Version | None) -> Version:
        """The version to send under ``cap`` (None: uncapped)."""
        if cap is None or cap.major != self.newest.major:
            return self.newest
        return min(self.newest, cap)

    def arguments_for(self, version: Version, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` without the arguments ``version`` does not have."""
        dropped = [
            arg
            for arg, since in self.args.items()
            if arg in kwargs and parse_version(since) > version
        ]
        if not dropped:
            return kwargs
        LOG.debug("%s at %s: dropping %s for an older server", self.name, version, dropped)
        return {k: v for k, v in kwargs.items() if k not in dropped}
