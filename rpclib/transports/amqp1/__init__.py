"""The AMQP 1.0 transport (``amqp1://``, ``amqps://`` with TLS, alias ``qpid://``) on proton.

See docs/transports/amqp1.md. Importing this package imports proton.
"""

from rpclib.transports.amqp1.driver import Amqp1Driver

__all__ = ["Amqp1Driver"]
