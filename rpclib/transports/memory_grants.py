"""Least privilege on a ``memory://`` bus: the checks the bus makes for an account's Grants.

An account added with grants (``add_account(bus, user, password,
grants=Access(...).grants())``, or :func:`rpclib.access.provision` on
``memory://BUS``) may only do what they name, as a RabbitMQ user with
configure/write/read and topic permissions may:

- ``listen`` on a topic group, server or fanout queue it may consume;
- ``declare`` a queue it may consume, or the queue of a topic it may send to
  (declaring makes at-least-once sends wait for consumers; it reads nothing);
- ``send`` to a topic (its shared queue, servers and fanout) it may send to;
- ``advertise`` and ``withdraw`` the server adverts it may write;
- ``watch_adverts`` of the topics it may watch.

Inboxes (opening one, replying into any) and settling received messages
(including dead-lettering them) are always allowed: every principal needs
them. Accounts without grants, and buses without accounts, are not checked.
Each refusal raises :class:`AccessRefused` for the driver and is logged (a
WARNING on ``rpclib.transports.memory``, rate-limited per principal).
"""

from __future__ import annotations

import logging

import rpclib.exceptions
from rpclib.access import Grants
from rpclib.logsummary import SummaryLog
from rpclib.transports.base import Address

__all__ = ["AccessRefused", "Guard"]

LOG = logging.getLogger("rpclib.transports.memory")


class AccessRefused(rpclib.exceptions.AccessRefused):
    """The bus refused an operation the account's grants do not allow."""

    def __init__(self, principal: str, operation: str, target: str) -> None:
        super().__init__(
            f"access refused: account {principal!r} may not {operation} {target} "
            "(not in its grants)"
        )
        self.principal = principal
        self.operation = operation
        self.target = target


def _group(group: str | None) -> str:
    return "" if group is None else f" [group {group}]"


class Guard:
    """One bus's checks; every refusal is logged (rate-limited per principal, with counts)."""

    def __init__(self, bus: str) -> None:
        self.bus = bus
        self._log = SummaryLog(LOG)

    def _refuse(self, grants: Grants, operation: str, target: str) -> AccessRefused:
        refused = AccessRefused(grants.principal, operation, target)
        self._log.log(
            logging.WARNING,
            f"refusals of {grants.principal!r}",
            "memory bus %r: %s",
            self.bus,
            refused,
        )
        return refused

    def consume(self, grants: Grants | None, address: Address, group: str | None) -> None:
        """May this account listen on ``address`` (as ``group``)?"""
        if grants is not None and not grants.may_consume(address, group):
            raise self._refuse(grants, "consume from", f"{address}{_group(group)}")

    def declare(self, grants: Grants | None, address: Address, group: str | None) -> None:
        """May this account declare ``address``'s queue: one it consumes or a topic it sends to?"""
        if grants is None or grants.may_consume(address, group):
            return
        if address.server is None and grants.may_send(address):
            return
        raise self._refuse(grants, "declare", f"{address}{_group(group)}")

    def send(self, grants: Grants | None, address: Address) -> None:
        """May this account send to ``address`` (its topic, one of its servers, or its fanout)?"""
        if grants is not None and not grants.may_send(address):
            raise self._refuse(grants, "send to", str(address))

    def advertise(self, grants: Grants | None, address: Address) -> None:
        """May this account write (or withdraw) ``address``'s advert?"""
        if grants is not None and not grants.may_advertise(address):
            raise self._refuse(grants, "advertise", str(address))

    def watch(self, grants: Grants | None, exchange: str, topic: str) -> None:
        """May this account read the adverts of ``exchange/topic``?"""
        if grants is not None and not grants.may_watch(exchange, topic):
            raise self._refuse(grants, "watch the adverts of", f"{exchange}/{topic}")
