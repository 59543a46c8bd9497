"""Every frame the rabbit:// encoder writes names its connection's user, and the
delivery decoder's fast paths read it back as py-amqp's generic decoder does."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from amqp.serialization import decode_properties_basic

from rpclib.transports.rabbit.connection import Delivery, PublishEncoder


def _header_payload(frames: bytes) -> bytes:
    """The content header frame's payload (the second frame) of an encoded publish."""
    _, _, size = struct.unpack_from(">BHI", frames)
    start = 7 + size + 1
    _, _, size = struct.unpack_from(">BHI", frames, start)
    return frames[start + 7 : start + 7 + size]


@pytest.mark.parametrize(
    ("properties", "message_id"),
    [
        ({}, None),  # a reply
        ({}, "abc.1.7"),  # a tracked call or cast without a deadline
        ({"delivery_mode": 2, "application_headers": {"x-rpclib-expires-at": 1.5}}, "m"),
        ({"user_id": "scheduler", "application_headers": {"k": "v"}}, None),  # a copied message
    ],
)
def test_every_publish_carries_the_connections_user(
    properties: dict[str, Any], message_id: str | None
) -> None:
    frames = PublishEncoder(1, 131072, "compute-1").encode(
        "rpclib", "conductor", b"body", properties, mandatory=False, message_id=message_id
    )
    assert frames is not None
    payload = _header_payload(frames)
    delivery = Delivery(1, {})
    delivery.on_header(payload)
    reference = decode_properties_basic(payload, 12)[0]
    assert delivery.properties == reference
    assert delivery.properties["user_id"] == "compute-1"
    assert delivery.properties.get("message_id") == message_id
