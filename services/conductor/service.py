"""The conductor process: database, RPC endpoint, periodic usage audit.

Before serving, a conductor asks every live conductor on the bus which
database it uses (its identity, ``database_id``) and refuses to start if one
uses another database: conductors on different databases sharing a bus would
each answer part of the traffic from its own data.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

import rpclib
from rpclib import console
from services import notifications
from services.common import identities
from services.common.config import ServiceConfig
from services.common.process import run_service
from services.conductor.db import ConductorDB, create_engine, migrations
from services.conductor.manager import ConductorManager
from services.conductor.rpcapi import TOPIC, ConductorAPI

LOG = logging.getLogger("services.conductor")
OPTIONS = (
    "transport_url",
    "host",
    "log_level",
    "state_dir",
    "db_url",
    "audit_interval",
    "authorization",
)


class DatabaseConflict(RuntimeError):
    """Another conductor on this bus uses a different database."""


class ConductorService:
    """Owns the database; serves the conductor interface on ``conductor.<host>``."""

    def __init__(
        self,
        transport: rpclib.Transport,
        *,
        host: str,
        db_url: str | None = None,
        state_dir: Path | None = None,
        audit_interval: float = 3600.0,
        authorization: bool = True,
    ) -> None:
        identities.principal(identities.CONDUCTOR, host)  # a host that cannot name one fails here
        self.transport = transport
        self.host = host
        self.authorization = authorization
        self.engine = create_engine(db_url, state_dir=state_dir)
        self.audit_interval = audit_interval
        self.db: ConductorDB | None = None
        self.server: rpclib.RPCServer | None = None
        self.manager: ConductorManager | None = None
        self.notifier = rpclib.Notifier(
            transport,
            publisher_id=f"conductor.{host}",
            topics=[notifications.TOPIC],
            ensure_pools=("billing",),
        )
        self._stop = threading.Event()
        self._audit_from = dt.datetime.now(dt.UTC)

    def start(self) -> None:
        migrations.upgrade(self.engine)
        self.db = ConductorDB(self.engine)
        self._check_peers(self.db.database_id())
        self.manager = ConductorManager(self.db, self.notifier, authorization=self.authorization)
        self.server = rpclib.RPCServer(
            self.transport,
            rpclib.Target(topic=TOPIC, server=self.host),
            [self.manager, rpclib.ObjectBackportEndpoint()],
            policy=identities.server_policy(identities.CONDUCTOR, self.authorization),
        )
        self.server.start()
        threading.Thread(target=self._audit_loop, name="conductor-audit", daemon=True).start()
        LOG.info("conductor %s serving, database %s", self.host, self.engine.url)

    def _check_peers(self, mine: str) -> None:
        """Raise DatabaseConflict if a live conductor on the bus serves another database."""
        view = self.transport.directory.view(self.transport.default_exchange, TOPIC)
        api = ConductorAPI(self.transport)
        for advert in view.live():
            if advert.server == self.host:  # our own advert, left by a previous run
                continue
            try:
                theirs = api.database_id({}, advert.server)
            except rpclib.VersionCapError:
                LOG.warning(
                    "conductor %s predates database identities; not compared", advert.server
                )
                continue
            except rpclib.MessagingError as exc:
                LOG.warning(
                    "conductor %s did not say which database it uses: %s", advert.server, exc
                )
                continue
            if theirs != mine:
                raise DatabaseConflict(
                    f"conductor {self.host} uses database "
                    f"{self.engine.url.render_as_string(hide_password=True)} (id {mine}), but "
                    f"conductor {advert.server} on this bus uses another one (id {theirs}); "
                    "all conductors on a bus must use the same database (--db-url)"
                )

    def audit(self, until: dt.datetime | None = None) -> int:
        """Emit instance.exists for the period since the last audit; returns how many."""
        assert self.manager is not None
        end = until or dt.datetime.now(dt.UTC)
        start, self._audit_from = self._audit_from, end
        return self.manager.emit_exists(start, end)

    def _audit_loop(self) -> None:
        while not self._stop.wait(self.audit_interval):
            try:
                LOG.info("usage audit: %d instance.exists sent", self.audit())
            except Exception:
                LOG.exception("usage audit failed; the next one covers the period")

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server.wait(30)
        self.notifier.close()
        self.engine.dispose()


def _build(c: ServiceConfig, t: rpclib.Transport) -> ConductorService:
    # a malformed URL or a missing database driver is named as the --db-url's fault
    with console.setting("--db-url", (SQLAlchemyError, ImportError)):
        service = ConductorService(
            t,
            host=c.host,
            db_url=c.db_url,
            state_dir=c.state_dir,
            audit_interval=c.audit_interval,
            authorization=c.authorization,
        )
    try:  # an unreachable database or a refused login, said before anything is served
        service.engine.connect().close()
    except DBAPIError as exc:
        service.stop()
        reason = console.describe(exc.orig) if exc.orig is not None else console.describe(exc)
        raise console.SettingError("--db-url", f"{service.engine.url}: {reason}") from exc
    return service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("conductor", argv, OPTIONS, __doc__, _build, {SQLAlchemyError: "--db-url"})


if __name__ == "__main__":
    sys.exit(main())
