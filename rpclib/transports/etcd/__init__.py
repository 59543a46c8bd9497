"""The etcd transport (``etcd[s]://[user:password@]host:2379[,host:2379]/prefix``) over etcd3gw.

``etcds://`` is HTTPS (``ssl*`` options as for ``rabbits://``); ``user:password``
is etcd v3 authentication (a token per driver, renewed when etcd forgets it).

Importing this package needs etcd3gw (installed with ``rpclib[etcd]``);
``import rpclib`` alone never does. The key scheme, guarantees and options
are in ``docs/transports/etcd.md``.
"""

from rpclib.transports.etcd.driver import EtcdDriver

__all__ = ["EtcdDriver"]
