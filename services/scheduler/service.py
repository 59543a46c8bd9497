"""The scheduler process."""

from __future__ import annotations

from collections.abc import Sequence

import rpclib
from services.common import identities
from services.common.process import run_service
from services.compute.rpcapi import ComputeAPI
from services.conductor.rpcapi import ConductorAPI
from services.scheduler.manager import SchedulerManager
from services.scheduler.rpcapi import TOPIC

OPTIONS = ("transport_url", "host", "log_level", "strategy", "authorization")


class SchedulerService:
    """Serves the scheduler interface on ``scheduler.<host>``."""

    def __init__(
        self,
        transport: rpclib.Transport,
        *,
        host: str,
        strategy: str = "spread",
        authorization: bool = True,
    ):
        identities.principal(identities.SCHEDULER, host)  # a host that cannot name one fails here
        self.manager = manager = SchedulerManager(
            ConductorAPI(transport), ComputeAPI(transport), strategy=strategy
        )
        self.server = rpclib.RPCServer(
            transport,
            rpclib.Target(topic=TOPIC, server=host),
            [manager],
            policy=identities.server_policy(identities.SCHEDULER, authorization),
        )

    def start(self) -> None:
        self.manager.compute.live_hosts()  # watch compute adverts now, not on the first boot
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.server.wait(30)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        "scheduler",
        argv,
        OPTIONS,
        __doc__,
        lambda c, t: SchedulerService(
            t, host=c.host, strategy=c.strategy, authorization=c.authorization
        ),
    )


if __name__ == "__main__":
    import sys

    sys.exit(main())
