"""The scheduler process."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import rpclib
from services.common import identities
from services.common.process import run_service
from services.common.upgrade_levels import cap_for, describe_caps
from services.compute.rpcapi import ComputeAPI
from services.conductor.rpcapi import ConductorAPI
from services.scheduler.manager import SchedulerManager
from services.scheduler.rpcapi import TOPIC

LOG = logging.getLogger("services.scheduler")
OPTIONS = ("transport_url", "host", "log_level", "strategy", "authorization", "upgrade_levels")


class SchedulerService:
    """Serves the scheduler interface on ``scheduler.<host>``."""

    def __init__(
        self,
        transport: rpclib.Transport,
        *,
        host: str,
        strategy: str = "spread",
        authorization: bool = True,
        upgrade_levels: Mapping[str, str] | None = None,
    ):
        identities.principal(identities.SCHEDULER, host)  # a host that cannot name one fails here
        self.levels = dict(upgrade_levels or {})
        self.manager = manager = SchedulerManager(
            ConductorAPI(transport, version_cap=cap_for(self.levels, "conductor")),
            ComputeAPI(transport, version_cap=cap_for(self.levels, "compute")),
            strategy=strategy,
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
        LOG.info("scheduler %s", describe_caps(self.levels, ("conductor", "compute")))

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
            t,
            host=c.host,
            strategy=c.strategy,
            authorization=c.authorization,
            upgrade_levels=c.upgrade_levels,
        ),
    )


if __name__ == "__main__":
    import sys

    sys.exit(main())
