"""The RabbitMQ transport (``rabbit://``, ``rabbits://``) over py-amqp.

Importing this package needs py-amqp (installed with ``rpclib[rabbit]``);
``import rpclib`` alone never does. The design, names and options are in
``docs/transports/rabbit.md``.

Modules: ``driver`` (the Driver contract), ``io_thread`` (the consumer
connection and the thread that reads it), ``fast_publish`` (publish paths 1
and 4: calls, replies, adverts, pipelined casts), ``publisher`` (paths 2 and
3: pooled confirmed publishes), ``consumer`` (subscriptions, inboxes,
settlement), ``adverts``, ``naming``, ``options``, ``connection`` (py-amqp
connections and the frame codecs).
"""

from rpclib.transports.rabbit.driver import RabbitDriver

__all__ = ["RabbitDriver"]
