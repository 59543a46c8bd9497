"""The request context: a dict of plain values that travels in the envelope header.

It is readable without decoding the message body (servers log and check it
on the driver thread), so it holds plain values only; rich values go in the
arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpclib.exceptions import SerializationError

_PLAIN_TYPES = (str, int, float, bool, bytes, type(None))


def checked_ctx(ctx: Mapping[str, Any] | None) -> dict[str, Any]:
    """ctx travels in the envelope header: a map of plain values only."""
    if ctx is None:
        return {}
    if not isinstance(ctx, Mapping):
        raise SerializationError(f"ctx must be a dict, got {type(ctx).__name__}")
    out = dict(ctx)
    for key, value in out.items():
        if type(key) is not str:
            raise SerializationError(f"ctx keys must be strings, got {key!r}")
        _check_plain(value, f"ctx[{key!r}]")
    return out


def _check_plain(value: Any, path: str) -> None:
    if type(value) in _PLAIN_TYPES:
        return
    if type(value) is list:
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]")
        return
    if type(value) is dict:
        for k, item in value.items():
            if type(k) is not str:
                raise SerializationError(f"{path} keys must be strings, got {k!r}")
            _check_plain(item, f"{path}[{k!r}]")
        return
    raise SerializationError(
        f"{path} is {type(value).__name__}: ctx holds plain values only "
        "(str, int, float, bool, None, bytes, list, dict); pass rich values as arguments"
    )
