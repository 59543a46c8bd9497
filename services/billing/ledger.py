"""The usage ledger: instance lifetimes from notifications, in one SQLite file.

Every accepted notification is recorded once under its message id (a primary
key), so a redelivered or duplicated one is recognised and ignored. Per
instance the ledger keeps what billing needs, merged so the result does not
depend on arrival order:

- ``launched_at`` from ``instance.create.end`` and ``deleted_at`` from
  ``instance.delete.end`` (the earliest, should there be several);
- the audit windows ``[audit_period_start, audit_period_end)`` of
  ``instance.exists``: evidence the instance was alive then, which bills the
  window even when its ``create.end`` was missed;
- project and sizes from the most authoritative event seen: create.end, then
  delete.end, then the exists with the latest audit window (ties broken by
  message id).

An instance is billable over ``[launched_at, deleted_at)`` united with its
audit windows, clipped to ``[launched_at, deleted_at)`` where those are known
(an audit window never bills before the launch or after the deletion).

Times are stored as integer microseconds since the epoch (UTC), so usage sums
are exact until the final division into hours. One writer connection, guarded
by a lock, in WAL mode with ``synchronous=FULL``: :meth:`Ledger.record`
returns only once its transaction is durable. Several processes may share the
file (``BEGIN IMMEDIATE`` serialises their writes).
"""

from __future__ import annotations

import datetime as dt
import enum
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 30.0

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_MICROSECONDS_PER_HOUR = 3_600_000_000
_FOREVER = 2**62

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    message_id    TEXT PRIMARY KEY,
    event_type    TEXT NOT NULL,
    instance_uuid TEXT NOT NULL,
    recorded_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instances (
    instance_uuid   TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL,
    vcpus           INTEGER NOT NULL,
    memory_mb       INTEGER NOT NULL,
    disk_gb         INTEGER NOT NULL,
    size_rank       INTEGER NOT NULL,
    size_period_end INTEGER NOT NULL,
    size_message_id TEXT NOT NULL,
    launched_at     INTEGER,
    deleted_at      INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audits (
    instance_uuid TEXT NOT NULL,
    period_start  INTEGER NOT NULL,
    period_end    INTEGER NOT NULL,
    PRIMARY KEY (instance_uuid, period_start, period_end)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audits_by_period ON audits (period_end, period_start);
"""


class EventKind(enum.Enum):
    """The notifications billing records, by event type."""

    CREATE_END = "instance.create.end"
    DELETE_END = "instance.delete.end"
    EXISTS = "instance.exists"


# which event's project and sizes win: higher rank first
_SIZE_RANK = {EventKind.CREATE_END: 3, EventKind.DELETE_END: 2, EventKind.EXISTS: 1}


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One billing-relevant notification, validated.

    ``launched_at`` is required for CREATE_END, ``deleted_at`` for
    DELETE_END, ``audit_period_start`` < ``audit_period_end`` for EXISTS;
    the ledger reads only the time fields of the event's own kind.
    """

    kind: EventKind
    instance_uuid: str
    project_id: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    launched_at: dt.datetime | None = None
    deleted_at: dt.datetime | None = None
    audit_period_start: dt.datetime | None = None
    audit_period_end: dt.datetime | None = None

    def __post_init__(self) -> None:
        required = {
            EventKind.CREATE_END: ("launched_at",),
            EventKind.DELETE_END: ("deleted_at",),
            EventKind.EXISTS: ("audit_period_start", "audit_period_end"),
        }[self.kind]
        for name in required:
            if getattr(self, name) is None:
                raise ValueError(f"{self.kind.value} needs {name}")
        for name in ("launched_at", "deleted_at", "audit_period_start", "audit_period_end"):
            value = getattr(self, name)
            if value is not None:
                to_micros(value, name)
        if (
            self.audit_period_start is not None
            and self.audit_period_end is not None
            and not self.audit_period_start < self.audit_period_end
        ):
            raise ValueError(
                f"audit_period_start ({self.audit_period_start.isoformat()}) must be before "
                f"audit_period_end ({self.audit_period_end.isoformat()})"
            )


@dataclass(frozen=True, slots=True)
class ProjectUsage:
    """One project's usage over a window: sizes times billable hours, summed."""

    project_id: str
    instances: int
    vcpu_hours: float
    memory_mb_hours: float
    disk_gb_hours: float


def to_micros(value: dt.datetime, name: str = "timestamp") -> int:
    """Microseconds since the epoch of a timezone-aware datetime; naive is a ValueError."""
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return (value - _EPOCH) // _MICROSECOND


def billable_spans(
    launched_at: int | None, deleted_at: int | None, audits: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The disjoint, sorted ``[start, end)`` spans over which an instance is billable."""
    spans = list(audits)
    if launched_at is not None:
        spans.append((launched_at, _FOREVER))
    low = launched_at if launched_at is not None else -_FOREVER
    high = deleted_at if deleted_at is not None else _FOREVER
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(s, low), min(e, high)) for s, e in spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def overlap(spans: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """How much of ``[start, end)`` the disjoint ``spans`` cover."""
    return sum(max(0, min(e, end) - max(s, start)) for s, e in spans)


@dataclass(slots=True)
class _Totals:
    instances: int = 0
    vcpu: int = 0
    memory_mb: int = 0
    disk_gb: int = 0


class Ledger:
    """The usage ledger in the SQLite file ``path`` (created if missing).

    Thread-safe; :meth:`close` it (or use it as a context manager) when done.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        if str(path) in ("", ":memory:"):
            raise ValueError("the ledger needs a file path, not an in-memory database")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{self.path}: cannot switch the ledger to WAL (got {mode!r})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path}: ledger schema version {version}, this code knows "
                    f"{SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # --- writing ---------------------------------------------------------------------------

    def record(self, message_id: str, event: UsageEvent) -> bool:
        """Record ``event`` under ``message_id``; False if that id was recorded before.

        Returns once the write is committed and durable.
        """
        if not isinstance(message_id, str) or not message_id:
            raise ValueError(f"message_id must be a non-empty string, got {message_id!r}")
        now = to_micros(dt.datetime.now(dt.UTC))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                inserted = db.execute(
                    "INSERT OR IGNORE INTO notifications VALUES (?, ?, ?, ?)",
                    (message_id, event.kind.value, event.instance_uuid, now),
                ).rowcount
                if not inserted:
                    db.execute("ROLLBACK")
                    return False
                self._merge_instance(message_id, event)
                window = _audit_window(event)
                if window is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO audits VALUES (?, ?, ?)",
                        (event.instance_uuid, *window),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return True

    def _merge_instance(self, message_id: str, event: UsageEvent) -> None:
        """Fold ``event`` into its instance's row (commutative: order does not matter)."""
        create, delete = event.kind is EventKind.CREATE_END, event.kind is EventKind.DELETE_END
        launched = _micros_or_none(event.launched_at if create else None)
        deleted = _micros_or_none(event.deleted_at if delete else None)
        window = _audit_window(event)
        new_key = (_SIZE_RANK[event.kind], window[1] if window else 0, message_id)
        sizes = (event.project_id, event.vcpus, event.memory_mb, event.disk_gb)
        row = self._db.execute(
            "SELECT size_rank, size_period_end, size_message_id, launched_at, deleted_at "
            "FROM instances WHERE instance_uuid = ?",
            (event.instance_uuid,),
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.instance_uuid, *sizes, *new_key, launched, deleted),
            )
            return
        old_key = (row[0], row[1], row[2])
        if new_key > old_key:
            self._db.execute(
                "UPDATE instances SET project_id = ?, vcpus = ?, memory_mb = ?, disk_gb = ?, "
                "size_rank = ?, size_period_end = ?, size_message_id = ? "
                "WHERE instance_uuid = ?",
                (*sizes, *new_key, event.instance_uuid),
            )
        self._db.execute(
            "UPDATE instances SET launched_at = ?, deleted_at = ? WHERE instance_uuid = ?",
            (_earliest(row[3], launched), _earliest(row[4], deleted), event.instance_uuid),
        )

    # --- reading ---------------------------------------------------------------------------

    def has_message(self, message_id: str) -> bool:
        """True if a notification with ``message_id`` was recorded."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM notifications WHERE message_id = ?", (message_id,)
            ).fetchone()
        return row is not None

    def message_count(self) -> int:
        """How many distinct notifications were recorded."""
        with self._lock:
            count: int = self._db.execute("SELECT count(*) FROM notifications").fetchone()[0]
        return count

    def usage(self, start: dt.datetime, end: dt.datetime) -> list[ProjectUsage]:
        """Usage per project over ``[start, end)``, sorted by project id.

        Each instance adds its sizes times the hours its billable spans
        overlap the window; one still running counts up to ``end``. Projects
        with no billable instance in the window are left out.
        """
        low, high = to_micros(start, "start"), to_micros(end, "end")
        if high < low:
            raise ValueError(f"end ({end.isoformat()}) is before start ({start.isoformat()})")
        with self._lock:
            self._db.execute("BEGIN")
            try:
                instances = self._db.execute(
                    "SELECT instance_uuid, project_id, vcpus, memory_mb, disk_gb, launched_at, "
                    "deleted_at FROM instances WHERE (deleted_at IS NULL OR deleted_at > ?) AND "
                    "((launched_at IS NOT NULL AND launched_at < ?) OR instance_uuid IN "
                    "(SELECT instance_uuid FROM audits WHERE period_end > ? AND period_start < ?))",
                    (low, high, low, high),
                ).fetchall()
                audits = self._db.execute(
                    "SELECT instance_uuid, period_start, period_end FROM audits "
                    "WHERE period_end > ? AND period_start < ?",
                    (low, high),
                ).fetchall()
            finally:
                self._db.execute("COMMIT")
        windows: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        for uuid, period_start, period_end in audits:
            windows[uuid].append((period_start, period_end))
        totals: defaultdict[str, _Totals] = defaultdict(_Totals)
        for uuid, project, vcpus, memory_mb, disk_gb, launched, deleted in instances:
            billed = overlap(billable_spans(launched, deleted, windows[uuid]), low, high)
            if billed <= 0:
                continue
            total = totals[project]
            total.instances += 1
            total.vcpu += vcpus * billed
            total.memory_mb += memory_mb * billed
            total.disk_gb += disk_gb * billed
        return [
            ProjectUsage(
                project_id=project,
                instances=t.instances,
                vcpu_hours=t.vcpu / _MICROSECONDS_PER_HOUR,
                memory_mb_hours=t.memory_mb / _MICROSECONDS_PER_HOUR,
                disk_gb_hours=t.disk_gb / _MICROSECONDS_PER_HOUR,
            )
            for project, t in sorted(totals.items())
        ]

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"


def _audit_window(event: UsageEvent) -> tuple[int, int] | None:
    if event.kind is not EventKind.EXISTS:
        return None
    assert event.audit_period_start is not None and event.audit_period_end is not None
    return to_micros(event.audit_period_start), to_micros(event.audit_period_end)


def _micros_or_none(value: dt.datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
