"""The billing process: a notification listener in its own pool, plus a usage query.

Interface (namespace ``billing``) version history: 1.0: usage(start, end).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import rpclib
from services.billing import Ledger, make_listener
from services.common import identities
from services.common.process import run_service

TOPIC = "billing"
NAMESPACE = "billing"
VERSION = "1.0"
OPTIONS = ("transport_url", "host", "log_level", "state_dir", "authorization")


class BillingAPIEndpoint:
    """Answers usage queries from the ledger."""

    target = rpclib.Target(namespace=NAMESPACE, version=VERSION)

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def usage(
        self, ctx: dict[str, Any], start: dt.datetime, end: dt.datetime
    ) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.ledger.usage(start, end)]


class BillingService:
    """Keeps the usage ledger in ``<state_dir>/billing.sqlite``."""

    def __init__(
        self,
        transport: rpclib.Transport,
        *,
        host: str,
        state_dir: Path,
        authorization: bool = True,
    ) -> None:
        identities.principal(identities.BILLING, host)  # a host that cannot name one fails here
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(state_dir / "billing.sqlite")
        policy = identities.server_policy(identities.BILLING, authorization)
        self.listener = make_listener(
            transport,
            self.ledger,
            policy=identities.BILLING_LISTENER_POLICY if policy is not None else None,
        )
        self.server = rpclib.RPCServer(
            transport,
            rpclib.Target(topic=TOPIC, server=host),
            [BillingAPIEndpoint(self.ledger)],
            policy=policy,
        )

    def start(self) -> None:
        self.listener.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.listener.stop()
        self.server.wait(30)
        self.listener.wait(30)
        self.ledger.close()


class BillingAPI:
    """Client for usage queries."""

    def __init__(
        self, transport: rpclib.Transport, *, timeout: float = 30.0, version_cap: str = "auto"
    ) -> None:
        self.client = rpclib.RPCClient(
            transport,
            rpclib.Target(topic=TOPIC, namespace=NAMESPACE, version=VERSION),
            version_cap=version_cap,  # "auto", or the operator's pin (upgrade_levels)
            timeout=timeout,
            max_time=10 * timeout,  # a stuck handler that still beats can't hold us forever
        )

    def usage(
        self, ctx: dict[str, Any], start: dt.datetime, end: dt.datetime
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.call(ctx, "usage", start=start, end=end)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "billing",
        argv,
        OPTIONS,
        __doc__,
        lambda c, t: BillingService(
            t, host=c.host, state_dir=c.state_dir, authorization=c.authorization
        ),
    )


if __name__ == "__main__":
    import sys

    sys.exit(main())
