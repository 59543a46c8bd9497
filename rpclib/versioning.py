"""Interface versions, the compatibility rule, and version caps.

A version is ``MAJOR.MINOR``. An implementation of X.Y honours a request for
X.Z when Z <= Y; a different major never matches. Caps are either fixed
(``"1.2"``) or follow the live servers (``"auto"``, see :mod:`rpclib.directory`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple


class Version(NamedTuple):
    """A parsed ``MAJOR.MINOR`` version; orders numerically (1.10 > 1.9)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def can_honour(self, requested: Version) -> bool:
        """True when an implementation at this version accepts ``requested``."""
        return requested.major == self.major and requested.minor <= self.minor


@lru_cache(maxsize=1024)
def parse_version(text: str | Version) -> Version:
    """Parse ``"1.2"`` into ``Version(1, 2)``; raise ValueError naming the bad text."""
    if isinstance(text, Version):
        return text
    if not isinstance(text, str):
        raise ValueError(f"version must be a 'MAJOR.MINOR' string, got {text!r}")
    major, sep, minor = text.partition(".")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise ValueError(f"invalid version {text!r}: expected 'MAJOR.MINOR', e.g. '1.2'")
    return Version(int(major), int(minor))


def is_compatible(requested: str | Version, implemented: str | Version) -> bool:
    """The version rule: same major, and requested minor <= implemented minor."""
    return parse_version(implemented).can_honour(parse_version(requested))


def highest_compatible(
    requested: str | Version, implemented: Iterable[str | Version]
) -> Version | None:
    """The highest implemented version that honours ``requested``, or None."""
    want = parse_version(requested)
    best: Version | None = None
    for text in implemented:
        v = parse_version(text)
        if v.can_honour(want) and (best is None or v > best):
            best = v
    return best
