"""rpclib: versioned RPC and notifications over pluggable transports.

::

    import rpclib
    transport = rpclib.get_transport("memory://")
    client = rpclib.RPCClient(transport, rpclib.Target(topic="compute"), version_cap="auto")
    client.prepare(server="host1").call(ctx, "boot", name="vm1")

See the README for a tour and ``docs/architecture.md`` for the design.
"""

from rpclib.access import Access, Account
from rpclib.client import CastFailure, RPCClient
from rpclib.compat import Method
from rpclib.exceptions import (
    AccessRefused,
    ConnectionLost,
    FieldNotSet,
    FieldTypeError,
    Forbidden,
    IncompatibleObjectVersion,
    InvalidArguments,
    InvalidTransportURL,
    MalformedMessage,
    MaxTimeExceeded,
    MessageTooLarge,
    MessagingError,
    MessagingTimeout,
    NoSuchMethod,
    ObjectError,
    PermanentError,
    RemoteError,
    ReplyTimeout,
    SendTimedOut,
    SerializationError,
    TransportError,
    Undeliverable,
    UnknownObject,
    UnknownTransport,
    UnsupportedEnvelope,
    UnsupportedVersion,
    VersionCapError,
)
from rpclib.indirection import ObjectBackportEndpoint, RPCIndirection
from rpclib.listener import (
    BatchNotificationListener,
    NotificationFilter,
    NotificationListener,
    NotificationResult,
)
from rpclib.notifier import NotificationDriver, Notifier
from rpclib.objects import Registry, VersionedObject, fields, register
from rpclib.policy import Allow, Policy
from rpclib.serializer import Serializer
from rpclib.server import RequestInfo, RPCServer, current_request
from rpclib.target import Target
from rpclib.transport import Transport, get_transport

__version__ = "0.1.0"

__all__ = [
    "Access",
    "AccessRefused",
    "Account",
    "Allow",
    "BatchNotificationListener",
    "CastFailure",
    "ConnectionLost",
    "FieldNotSet",
    "FieldTypeError",
    "Forbidden",
    "IncompatibleObjectVersion",
    "InvalidArguments",
    "InvalidTransportURL",
    "MalformedMessage",
    "MaxTimeExceeded",
    "MessageTooLarge",
    "MessagingError",
    "MessagingTimeout",
    "Method",
    "NoSuchMethod",
    "NotificationDriver",
    "NotificationFilter",
    "NotificationListener",
    "NotificationResult",
    "Notifier",
    "ObjectBackportEndpoint",
    "ObjectError",
    "PermanentError",
    "Policy",
    "RPCClient",
    "RPCIndirection",
    "RPCServer",
    "Registry",
    "RemoteError",
    "ReplyTimeout",
    "RequestInfo",
    "SendTimedOut",
    "SerializationError",
    "Serializer",
    "Target",
    "Transport",
    "TransportError",
    "Undeliverable",
    "UnknownObject",
    "UnknownTransport",
    "UnsupportedEnvelope",
    "UnsupportedVersion",
    "VersionCapError",
    "VersionedObject",
    "__version__",
    "current_request",
    "fields",
    "get_transport",
    "register",
]
