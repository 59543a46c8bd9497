"""A server with canned answers that records every call: test a client against it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from rpclib.server import RPCServer, current_request
from rpclib.target import Target
from rpclib.transport import Transport


@dataclass(frozen=True)
class RecordedCall:
    """One request a :class:`StubServer` received."""

    method: str
    ctx: dict[str, Any]
    kwargs: dict[str, Any]
    version: str
    sender: str | None


class StubServer:
    """An :class:`rpclib.RPCServer` on ``target`` whose methods are ``answers``.

    Each answer is a value (returned as is), an exception instance (raised,
    so the caller gets it as a remote error), or a callable taking
    ``(ctx, **kwargs)`` whose result is returned. Every request is recorded
    in :attr:`calls`, in the order handled, with its authenticated sender.
    ``target`` needs a topic and a server name; its namespace and version
    are the interface the stub implements (``"1.0"`` if not given)::

        with StubServer(transport, Target(topic="conductor", server="c1",
                                          namespace="conductor", version="1.3"),
                        {"heartbeat": None}) as stub:
            code_under_test(transport)
        assert [c.method for c in stub.calls] == ["heartbeat"]
    """

    def __init__(
        self,
        transport: Transport,
        target: Target,
        answers: Mapping[str, Any],
        **server_options: Any,
    ) -> None:
        bad = [name for name in answers if not name.isidentifier() or name.startswith("_")]
        if bad:
            raise ValueError(f"stub methods must be public identifiers, got {bad}")
        self.calls: list[RecordedCall] = []
        self._lock = threading.Lock()
        endpoint_type = type(
            "Stub",
            (),
            {"target": target, **{name: self._method(name, a) for name, a in answers.items()}},
        )
        self.server = RPCServer(transport, target, [endpoint_type()], **server_options)

    def _method(self, name: str, answer: Any) -> Callable[..., Any]:
        def method(_endpoint: object, ctx: dict[str, Any], **kwargs: Any) -> Any:
            info = current_request()
            with self._lock:
                self.calls.append(
                    RecordedCall(
                        name,
                        ctx,
                        kwargs,
                        info.version if info else "",
                        info.sender if info else None,
                    )
                )
            if isinstance(answer, BaseException):
                raise answer
            if callable(answer):
                return answer(ctx, **kwargs)
            return answer

        method.__name__ = name
        return method

    def calls_to(self, method: str) -> list[RecordedCall]:
        """The recorded calls of one method."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.server.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
