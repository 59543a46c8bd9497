"""A transport per test on each real transport rpclib's core is checked on.

``any_transport`` runs a test on ``memory://`` (a bus of its own) and on
``rabbit://`` (the shared broker, in the session's vhost); ``unique_topic``
gives it a topic no other test uses on the shared broker. Import both into a
test module to use them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import rpclib


@pytest.fixture(params=["memory", "rabbit"])
def any_transport(request: pytest.FixtureRequest, bus_url: str) -> Iterator[rpclib.Transport]:
    url = bus_url if request.param == "memory" else request.getfixturevalue("rabbit_url")
    transport = rpclib.get_transport(url)
    yield transport
    transport.close()


@pytest.fixture
def unique_topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
