"""The value of a message key: a one-line header, then the body.

``b"<delivered> <expires_at|->\\n" + body``: ``delivered`` counts earlier
hand-overs to handlers (for messages pushed to one consumer; stored queue
messages count deliveries in their ``a/`` key instead), ``expires_at`` is the
sender's wall-clock deadline. Bodies are opaque bytes and may contain anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    body: bytes
    delivered: int = 0
    expires_at: float | None = None

    def encode(self) -> bytes:
        expires = b"-" if self.expires_at is None else repr(self.expires_at).encode()
        return b"%d %s\n" % (self.delivered, expires) + self.body

    @classmethod
    def decode(cls, value: bytes) -> Message:
        header, newline, body = value.partition(b"\n")
        delivered, _, expires = header.partition(b" ")
        if not newline or not delivered.isdigit() or not expires:
            raise ValueError(f"not an rpclib etcd message: {value[:40]!r}")
        return cls(body, int(delivered), None if expires == b"-" else float(expires))

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at
