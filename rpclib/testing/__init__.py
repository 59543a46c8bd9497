"""Testing helpers for services built on rpclib, shipped with the package.

The pieces a service author needs to test their own endpoints, clients and
listeners without a broker, with the library's real behaviour (serialization,
version checks, policies, errors), not a mock of it:

- :class:`TestBus`: an isolated in-memory bus per test, with transports logged
  in as named principals and optional fault injection;
- :func:`call_endpoint`: call one endpoint method as a remote caller would,
  without setting up a bus;
- :class:`StubServer`: a server answering some methods with canned answers and
  recording every call, to test a client against;
- :func:`handled`: wait until a server or listener has handled what a block sent
  (a cast, a notification);
- :func:`assert_fingerprints`: fail when an object or interface changed without
  a version bump.

With pytest these come as fixtures too (``rpclib.testing.pytest_plugin``,
registered by entry point: ``rpclib_bus``, ``rpclib_transport``,
``rpclib_stub_server``).
"""

from rpclib.fingerprint import assert_fingerprints
from rpclib.testing.bus import TestBus
from rpclib.testing.endpoint import call_endpoint
from rpclib.testing.stub import RecordedCall, StubServer
from rpclib.testing.waiting import handled

__all__ = [
    "RecordedCall",
    "StubServer",
    "TestBus",
    "assert_fingerprints",
    "call_endpoint",
    "handled",
]
