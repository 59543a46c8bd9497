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
"""

from __future__ import annotations

from rpclib.access import Grants
from rpclib.exceptions import TransportError
from rpclib.transports.base import Address

__all__ = ["AccessRefused", "check_advertise", "check_consume", "check_send", "check_watch"]


class AccessRefused(TransportError, PermissionError):
    """The bus refused an operation the account's grants do not allow.

    Not retryable: the same operation fails again until an operator changes
    the account's grants.
    """

    retryable = False

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


def check_consume(grants: Grants | None, address: Address, group: str | None) -> None:
    """May this account listen on ``address`` (as ``group``)?"""
    if grants is not None and not grants.may_consume(address, group):
        raise AccessRefused(grants.principal, "consume from", f"{address}{_group(group)}")


def check_declare(grants: Grants | None, address: Address, group: str | None) -> None:
    """May this account declare ``address``'s queue: one it consumes or a topic it sends to?"""
    if grants is None or grants.may_consume(address, group):
        return
    if address.server is None and grants.may_send(address):
        return
    raise AccessRefused(grants.principal, "declare", f"{address}{_group(group)}")


def check_send(grants: Grants | None, address: Address) -> None:
    """May this account send to ``address`` (its topic, one of its servers, or its fanout)?"""
    if grants is not None and not grants.may_send(address):
        raise AccessRefused(grants.principal, "send to", str(address))


def check_advertise(grants: Grants | None, address: Address) -> None:
    """May this account write (or withdraw) ``address``'s advert?"""
    if grants is not None and not grants.may_advertise(address):
        raise AccessRefused(grants.principal, "advertise", str(address))


def check_watch(grants: Grants | None, exchange: str, topic: str) -> None:
    """May this account read the adverts of ``exchange/topic``?"""
    if grants is not None and not grants.may_watch(exchange, topic):
        raise AccessRefused(grants.principal, "watch the adverts of", f"{exchange}/{topic}")
