"""The RabbitMQ transport (``rabbit://``, ``rabbits://``) over py-amqp.

Importing this package needs py-amqp (installed with ``rpclib[rabbit]``);
``import rpclib`` alone never does. The design, names and options are in
``docs/transports/rabbit.md``.
"""

from rpclib.transports.rabbit.driver import RabbitDriver

__all__ = ["RabbitDriver"]
