"""The wire envelope: encoded once, versioned, strict about what it reads."""

from __future__ import annotations

import msgpack
import pytest

from rpclib import envelope
from rpclib.envelope import Kind
from rpclib.exceptions import MalformedMessage, MessageTooLarge, UnsupportedEnvelope
from rpclib.serializer import Serializer

S = Serializer()
CALL_HEADER = {
    envelope.METHOD: "boot",
    envelope.VERSION: "1.2",
    envelope.CONTEXT: {"user": "u1"},
    envelope.DEADLINE: 1e12,
    envelope.REPLY_TO: "inbox-1",
}


def test_header_is_readable_without_decoding_the_body() -> None:
    mid = envelope.new_message_id()
    data = envelope.encode(S, Kind.CALL, mid, CALL_HEADER, {"n": 1})
    env = envelope.decode(data)
    assert env.kind is Kind.CALL
    assert env.message_id == mid
    assert env.header[envelope.METHOD] == "boot"
    assert env.body(S) == {"n": 1}


def test_message_ids_are_unique_16_bytes() -> None:
    ids = {envelope.new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 16 for i in ids)


def test_newer_envelope_version_is_rejected_naming_it() -> None:
    data = msgpack.packb([99, 1, b"x" * 16, {}, None])
    with pytest.raises(UnsupportedEnvelope, match="99"):
        envelope.decode(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "no msgpack array"),
        (b"\xc1\xc1\xc1", "no msgpack array"),
        (msgpack.packb({"not": "an array"}), "no msgpack array"),
        (msgpack.packb([1, 1, b"x" * 16]), "3 items"),
        (msgpack.packb([1, 42, b"x" * 16, {}, None]), "unknown envelope kind"),
        (msgpack.packb([1, 1, b"short", {}, None]), "message id"),
        (msgpack.packb([1, 1, b"x" * 16, [], None]), "header"),
        (msgpack.packb([1, 1, b"x" * 16, {}, None]), "lacks header field"),
    ],
)
def test_malformed_envelopes_name_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        envelope.decode(data)


def test_truncated_envelope_is_malformed() -> None:
    data = envelope.encode(S, Kind.CALL, envelope.new_message_id(), CALL_HEADER, {"n": 1})
    with pytest.raises(MalformedMessage):
        envelope.decode(data[: len(data) // 2])


def test_oversized_message_is_refused_on_encode_and_decode() -> None:
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 1000"):
        envelope.encode(
            S, Kind.CAST, envelope.new_message_id(), CALL_HEADER, "x" * 2000, max_size=1000
        )
    data = envelope.encode(S, Kind.CAST, envelope.new_message_id(), CALL_HEADER, "x" * 2000)
    with pytest.raises(MessageTooLarge):
        envelope.decode(data, max_size=1000)
