"""A transport per test on each real transport rpclib's core is checked on.

``any_transport`` (or ``any_url``) runs a test on ``memory://`` (a bus of its own) and on
``rabbit://`` (the shared broker, in the session's vhost); ``unique_topic``
gives it a topic no other test uses on the shared broker. Import them into a
test module to use them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import rpclib


@pytest.fixture(params=["memory", "rabbit"])
def any_url(request: pytest.FixtureRequest, bus_url: str) -> str:
    """A memory:// bus of the test's own, or the shared broker's session vhost."""
    if request.param == "memory":
        return bus_url
    url: str = request.getfixturevalue("rabbit_url")
    return url


@pytest.fixture
def any_transport(any_url: str) -> Iterator[rpclib.Transport]:
    transport = rpclib.get_transport(any_url)
    yield transport
    transport.close()


@pytest.fixture
def unique_topic() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
