"""An isolated in-memory bus for one test."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from rpclib.transport import Transport, get_transport
from rpclib.transports.memory import add_account, reset_bus

_FAULTS = ("drop", "duplicate", "reorder", "delay", "seed", "faults")


class TestBus:
    """A ``memory://`` bus of its own: nothing another test sends reaches it.

    ``transport()`` opens a transport on it (each models a separate process);
    ``transport(principal="compute-1")`` logs in as that principal, so servers
    with a policy see it as the authenticated sender. ``faults`` injects
    message faults on that transport's sends (``{"drop": 0.1, "seed": 7}``;
    see :mod:`rpclib.transports.memory` for the options). ``close()`` closes
    every transport opened here and drops the bus.
    """

    __test__ = False  # not a test class, whatever pytest's collection pattern says

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"test-{uuid.uuid4().hex[:12]}"
        self._opened: list[Transport] = []
        self._passwords: dict[str, str] = {}

    @property
    def url(self) -> str:
        """The bus's URL (no principal, no faults)."""
        return f"memory://{self.name}"

    def transport(
        self, *, principal: str | None = None, faults: Mapping[str, object] | None = None
    ) -> Transport:
        """A new transport on this bus, closed by :meth:`close`."""
        unknown = sorted(set(faults or {}) - set(_FAULTS))
        if unknown:
            raise ValueError(f"unknown fault option(s) {', '.join(unknown)}: use {_FAULTS}")
        if principal is not None and principal not in self._passwords:
            self._passwords[principal] = uuid.uuid4().hex
            add_account(self.name, principal, self._passwords[principal])
        if self._passwords and principal is None:
            raise ValueError(
                "this bus has accounts (a transport was opened with a principal): "
                "every transport on it needs one too"
            )
        login = "" if principal is None else f"{principal}:{self._passwords[principal]}@"
        query = urllib.parse.urlencode({k: str(v) for k, v in (faults or {}).items()})
        opened = get_transport(f"memory://{login}{self.name}" + (f"?{query}" if query else ""))
        self._opened.append(opened)
        return opened

    def close(self) -> None:
        for opened in self._opened:
            opened.close()
        self._opened.clear()
        reset_bus(self.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
