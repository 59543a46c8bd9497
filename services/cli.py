"""rpclib-cloud: the user command. Boot, list, show and delete instances; show usage.

    rpclib-cloud boot vm1 --vcpus 1 --memory 256 --disk 1 --image cirros.qcow2 \
        --key ~/.ssh/id_ed25519.pub --user-data cloud-config.yaml
    rpclib-cloud list
    rpclib-cloud show vm1
    rpclib-cloud delete vm1
    rpclib-cloud usage --since 2025-01-01T00:00:00+00:00

An image is a file path (a relative one is taken from the current directory;
the compute nodes must allow its directory, --image-dirs) or an http(s) URL.
Instances are named by UUID, unique UUID prefix (as ``list`` shows) or name.

Add ``--transport-url rabbit://admin:PASSWORD@host/`` (or set
RPCLIB_TRANSPORT_URL) to reach services running as separate processes. The
command logs in as the ``admin`` principal: the services serve it only the
methods a user needs (services.common.identities).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid as uuid_module
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import rpclib
from rpclib import console
from rpclib.ops_cli import topic_view
from rpclib.transports.base import Address
from services.billing.service import BillingAPI
from services.common import config as cfg
from services.common import guestdata
from services.common.accounts import CloudHosts, ProvisioningUnavailable, provision_kept
from services.common.tables import render
from services.compute.rpcapi import TOPIC as COMPUTE_TOPIC
from services.conductor.rpcapi import ConductorAPI
from services.objects import Instance
from services.scheduler.rpcapi import SchedulerAPI

SETTLED = ("ACTIVE", "ERROR", "DELETED")
GLOBAL_OPTIONS = ("transport_url", "log_level")  # accepted before or after the subcommand


class UnknownInstance(LookupError):
    """No instance has the given UUID, UUID prefix or name."""


class AmbiguousInstance(LookupError):
    """A UUID prefix or name matches several instances; the message lists them."""


class HostIsUp(RuntimeError):
    """A compute node that is still up cannot be forgotten."""


class Cloud:
    """The user's view of the services, over any transport.

    Instances are named by UUID, by a unique UUID prefix (``list`` shows the
    first 8 characters) or by a unique name. While it waits, it says what it is
    waiting for, and warns when the compute node doing the work is down (as
    the scheduler sees it on the bus: the node's advert is gone).
    """

    def __init__(
        self,
        transport: rpclib.Transport,
        *,
        out: TextIO | None = None,
        status_interval: float = 2.0,
    ) -> None:
        self.transport = transport
        self.scheduler = SchedulerAPI(transport)
        self.conductor = ConductorAPI(transport)
        self.billing = BillingAPI(transport)
        self.out = out if out is not None else sys.stdout
        self.ctx: dict[str, Any] = {"user": os.environ.get("USER", "demo")}
        self.status_interval = status_interval

    def resolve(self, ref: str, *, include_deleted: bool = True) -> str:
        """The UUID of the instance ``ref`` names: a UUID, a unique UUID prefix or a unique name.

        Among several matches, instances that are not DELETED win; if more than
        one is left, AmbiguousInstance lists them.
        """
        try:
            return str(uuid_module.UUID(ref))
        except ValueError:
            pass
        key = ref.strip().lower()
        if not key:
            raise UnknownInstance("an instance needs a UUID, a UUID prefix or a name")
        instances = self.conductor.list_instances(self.ctx, None, include_deleted)
        matches = [i for i in instances if str(i.uuid).startswith(key) or i.name == ref]
        alive = [i for i in matches if i.vm_state != "DELETED"]
        if len(matches) > 1 and alive:
            matches = alive
        if not matches:
            which = "" if include_deleted else " (that is not DELETED)"
            raise UnknownInstance(f"no instance{which} has the name or UUID prefix {ref!r}")
        if len(matches) > 1:
            listed = ", ".join(f"{i.uuid} ({i.name}, {i.vm_state})" for i in matches[:10])
            more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
            raise AmbiguousInstance(
                f"{ref!r} matches {len(matches)} instances: {listed}{more}; give more of the UUID"
            )
        return str(matches[0].uuid)

    def boot(self, name: str, *, wait: float | None = 300.0, **request: Any) -> Instance:
        """Boot an instance; with ``wait`` (seconds), show progress until ACTIVE or ERROR."""
        instance = self.scheduler.boot(self.ctx, name=name, **request)
        self.out.write(f"{name}: placed on {instance.host} ({instance.uuid})\n")
        if wait:
            instance = self.wait_for(
                str(instance.uuid),
                lambda i: i.vm_state in SETTLED,
                wait,
                host=instance.host,
                waiting="to build it",
            )
        return instance

    def delete(self, ref: str, *, wait: float | None = 300.0) -> Instance:
        """Delete the instance ``ref`` names; with ``wait``, show progress until DELETED."""
        uuid = self.resolve(ref, include_deleted=False)
        instance = self.scheduler.delete(self.ctx, uuid)
        if instance.vm_state == "DELETED":
            self.out.write(f"{instance.name}: DELETED (it was never placed on a host)\n")
            return instance
        self.out.write(f"{instance.name}: deleting on {instance.host} ({instance.uuid})\n")
        if wait:
            instance = self.wait_for(
                uuid,
                lambda i: i.vm_state in ("DELETED", "ERROR"),
                wait,
                host=instance.host,
                waiting="to delete it",
            )
        return instance

    def wait_for(
        self,
        uuid: str,
        done: Callable[[Instance], bool],
        timeout: float,
        *,
        host: str | None = None,
        waiting: str = "",
    ) -> Instance:
        """Poll the conductor, printing the state as it changes (one line on a terminal).

        With ``host``, says it waits for that compute node (``waiting`` says for
        what) and checks every ``status_interval`` seconds whether the node is
        up, warning once when it is down and once when it is back.
        """
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        last = ""
        tty = self.out.isatty()
        watch = _HostWatch(self, host) if host else None
        if host:
            self.out.write(f"waiting for {host} {waiting} (up to {timeout:g}s)\n")
        while True:
            instance = self.conductor.get_instance(self.ctx, uuid)
            status = f"{instance.name}: {instance.vm_state}"
            if instance.task_state:
                status += f" ({instance.task_state})"
            if tty:
                self.out.write(f"\r{status} {time.monotonic() - started:5.1f}s ")
                self.out.flush()
            elif status != last:
                self.out.write(status + "\n")
            last = status
            if done(instance):
                if tty:
                    self.out.write("\n")
                if instance.vm_state == "ERROR":
                    self.out.write(f"{instance.name}: ERROR: {instance.error_reason}\n")
                return instance
            if watch is not None:
                watch.check(instance.name)
            if time.monotonic() > deadline:
                why = f", waiting for {host} {waiting}" if host else ""
                if watch is not None and watch.down:
                    why += f" ({host} is down)"
                raise TimeoutError(
                    f"{instance.name} still {instance.vm_state} after {timeout:g}s{why}"
                )
            time.sleep(0.25)

    def forget_host(self, host: str, queues: rpclib.Transport | None = None) -> None:
        """Retire compute node ``host``: the conductor forgets its service row and inventory
        (refused while instances are on it), then its queue is removed from the bus
        (through ``queues``, an account that may delete it; default: this one)."""
        status = self.scheduler.compute_status(self.ctx, host)
        if status["up"]:
            raise HostIsUp(f"{host} is up ({status['reason']}); stop its compute service first")
        known = self.conductor.forget_compute(self.ctx, host)
        self.out.write(
            f"{host}: service and inventory removed\n"
            if known
            else f"{host}: the conductor did not know it\n"
        )
        bus = queues or self.transport
        address = Address(bus.default_exchange, COMPUTE_TOPIC, server=host)
        try:
            removed = bus.driver.remove_server_queues(address)
        except NotImplementedError as exc:  # rpclib.transports.base.CannotTell
            self.out.write(f"{host}: its queues were left on the bus: {exc}\n")
            return
        except rpclib.AccessRefused as exc:
            raise rpclib.AccessRefused(
                f"{exc}; run forget-host again with --queues-url set to the URL of an account "
                "that may delete it (the broker administrator's)"
            ) from None
        for name in removed:
            self.out.write(f"{host}: queue {name} removed\n")
        if not removed:
            self.out.write(f"{host}: no queue left on the bus\n")

    def list_table(self, project_id: str | None = None, include_deleted: bool = False) -> str:
        rows = [
            (
                str(i.uuid)[:8],
                i.name,
                i.project_id,
                i.host,
                i.vm_state,
                i.task_state,
                i.ip_address,
                i.flavor.vcpus,
                i.flavor.memory_mb,
                i.flavor.disk_gb,
            )
            for i in self.conductor.list_instances(self.ctx, project_id, include_deleted)
        ]
        headers = ("uuid", "name", "project", "host", "state", "task", "ip", "vcpus", "MB", "GB")
        return render(headers, rows)

    def show_table(self, ref: str) -> str:
        i = self.conductor.get_instance(self.ctx, self.resolve(ref))
        fields = (
            "uuid",
            "name",
            "project_id",
            "user_id",
            "host",
            "vm_state",
            "task_state",
            "ip_address",
            "error_reason",
            "image",
            "created_at",
            "launched_at",
            "deleted_at",
            "sequence",
        )
        rows = [(f, getattr(i, f)) for f in fields]
        rows += [
            ("flavor", f"{i.flavor.vcpus} vCPU, {i.flavor.memory_mb} MB, {i.flavor.disk_gb} GB")
        ]
        return render(("field", "value"), rows)

    def usage_table(self, start: dt.datetime, end: dt.datetime) -> str:
        rows = self.billing.usage(self.ctx, start, end)
        body = [
            (
                r["project_id"],
                r["instances"],
                r["vcpu_hours"],
                r["memory_mb_hours"],
                r["disk_gb_hours"],
            )
            for r in rows
        ]
        return render(("project", "instances", "vCPU-hours", "MB-hours", "GB-hours"), body)


class _HostWatch:
    """Whether the compute node a wait depends on is up, asked of the scheduler now and then."""

    def __init__(self, cloud: Cloud, host: str) -> None:
        self.cloud = cloud
        self.host = host
        self.down = False
        self.next_check = 0.0
        self.known = True  # False once the scheduler cannot say (older than 1.2)

    def check(self, name: str) -> None:
        if not self.known or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + self.cloud.status_interval
        try:
            status = self.cloud.scheduler.compute_status(self.cloud.ctx, self.host)
        except rpclib.VersionCapError:
            self.known = False
            return
        except rpclib.MessagingError:
            return  # the scheduler is busy or away; ask again later
        out = self.cloud.out
        if not status["up"] and not self.down:
            out.write(
                f"\n{name}: warning: {self.host} is down ({status['reason']}); the request "
                f"waits in its queue until {self.host} is back (Ctrl-C stops waiting, not "
                "the request)\n"
            )
        elif status["up"] and self.down:
            out.write(f"\n{name}: {self.host} is up again\n")
        self.down = not status["up"]


def image_location(text: str) -> str:
    """An image argument as the services need it: a local path made absolute (from the
    current directory, ``~`` expanded); a URL as it is."""
    if "://" in text or not text:
        return text
    return str(Path(text).expanduser().absolute())


def usage_window(
    since: dt.datetime | None, until: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    """``usage``'s window: until now, since a day before the end, unless given."""
    end = until or dt.datetime.now(dt.UTC)
    start = since or end - dt.timedelta(days=1)
    if start >= end:
        raise ValueError(
            f"--since {start.isoformat()} is not before --until {end.isoformat()}"
            + ("" if until else " (now)")
        )
    return start, end


def _read(path: Path, option: str) -> bytes:
    try:
        return path.expanduser().read_bytes()  # "~" too: the help's example, quoted
    except OSError as exc:
        raise ValueError(f"{option} {path}: {exc.strerror or exc}") from None


def guest_data(key: Path | None, user_data: Path | None) -> dict[str, str]:
    """``boot``'s key_data/user_data from files, checked here before anything is sent."""
    guest: dict[str, str] = {}
    if key is not None:
        text = _read(key, "--key").decode(errors="replace")
        guest["key_data"] = guestdata.check_public_key(text)
    if user_data is not None:
        guest["user_data"] = guestdata.encode_user_data(_read(user_data, "--user-data"))
    return guest


def _when(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _accounts(url: str, args: argparse.Namespace) -> int:
    """``rpclib-cloud accounts``: provision the cloud's accounts; print where each login is."""
    hosts = CloudHosts(args.conductor, args.scheduler, args.billing, tuple(args.compute))
    try:
        files = provision_kept(
            url, hosts, args.secrets, rotate_keys=args.rotate_key, retire_keys=args.retire_old_keys
        )
    except (ProvisioningUnavailable, ValueError, OSError, rpclib.MessagingError) as exc:
        print(f"rpclib-cloud: error: {exc}", file=sys.stderr)
        return 1
    print(render(("principal", "login URL file"), [(p, str(f)) for p, f in files.items()]))
    return 0


def _heartbeat(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    when = dt.datetime.fromisoformat(iso)
    return f"{when:%Y-%m-%d %H:%M:%S} ({int(now - when.timestamp())}s ago)"


def _services(cloud: Cloud, transport: rpclib.Transport, as_json: bool) -> str:
    """``rpclib-cloud services``: each service's versions, last heartbeat and advert.

    The conductor knows the services that register and heartbeat (compute
    nodes); every service's server advertises its interface versions, host,
    pid and start time on its topic. A topic this login may not watch shows
    its services from the conductor's records alone.
    """
    now = time.time()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in cloud.conductor.client.call(cloud.ctx, "list_services"):
        beat = record["last_heartbeat"]
        rows[(record["binary"], record["host"])] = {
            "service": record["binary"],
            "host": record["host"],
            "versions": {str(k): str(v) for k, v in record["versions"].items()},
            "last_heartbeat": beat.isoformat() if isinstance(beat, dt.datetime) else beat,
            "advertised_since": None,
            "pid": None,
            "advert": "none",
        }
    for service in ("conductor", "scheduler", "billing", "compute"):
        try:
            live = topic_view(transport, transport.default_exchange, service).live()
        except rpclib.AccessRefused:
            for row in rows.values():
                if row["service"] == service:
                    row["advert"] = "not visible to this login"
            continue
        for advert in live:
            row = rows.setdefault(
                (service, advert.server),
                {"service": service, "host": advert.server, "last_heartbeat": None},
            )
            row["versions"] = {
                ns or "": ",".join(str(v) for v in sorted(vs))
                for ns, vs in sorted(advert.interfaces.items(), key=lambda kv: kv[0] or "")
            }
            row["advertised_since"] = advert.started_at
            row["pid"] = advert.pid or None
            row["advert"] = "live"
    ordered = [rows[key] for key in sorted(rows)]
    if as_json:
        return json.dumps(ordered, indent=2, sort_keys=True)
    body = [
        (
            r["service"],
            r["host"],
            " ".join(f"{ns or '(default)'}={v}" for ns, v in r["versions"].items()) or "?",
            _heartbeat(r["last_heartbeat"], now),
            r["advert"]
            if r["advertised_since"] is None
            else f"live since {dt.datetime.fromtimestamp(r['advertised_since'], dt.UTC):%H:%M:%S}"
            f" ({int(now - r['advertised_since'])}s, pid {r['pid'] or '?'})",
        )
        for r in ordered
    ]
    return render(("service", "host", "versions", "last heartbeat", "advert"), body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rpclib-cloud",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cfg.add_arguments(parser, GLOBAL_OPTIONS)
    console.add_standard_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("boot", help="boot an instance")
    boot.add_argument("name")
    boot.add_argument("--vcpus", type=int, default=1)
    boot.add_argument("--memory", type=int, default=256, help="MB")
    boot.add_argument("--disk", type=int, default=1, help="GB")
    boot.add_argument("--image", required=True, help="file path or http(s) URL")
    boot.add_argument("--project", default="demo")
    boot.add_argument("--strategy", choices=("spread", "pack"))
    boot.add_argument("--no-wait", action="store_true")
    boot.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    boot.add_argument(
        "--key", type=Path, metavar="PUBKEY_FILE", help="SSH public key the guest is given"
    )
    boot.add_argument(
        "--user-data", type=Path, metavar="FILE", help="user data for the guest (at most 48 KiB)"
    )
    lst = sub.add_parser("list", help="list instances")
    lst.add_argument("--project")
    lst.add_argument("--all", action="store_true", help="include deleted instances")
    show = sub.add_parser("show", help="show one instance")
    show.add_argument("uuid", metavar="INSTANCE", help="UUID, unique UUID prefix or name")
    delete = sub.add_parser("delete", help="delete an instance")
    delete.add_argument("uuid", metavar="INSTANCE", help="UUID, unique UUID prefix or name")
    delete.add_argument("--no-wait", action="store_true")
    delete.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    forget = sub.add_parser(
        "forget-host",
        help="retire a compute node that is down: remove its service row, inventory and queue",
    )
    forget.add_argument("host")
    forget.add_argument(
        "--queues-url",
        help="URL of an account that may delete the node's queue (default: --transport-url)",
    )
    usage = sub.add_parser("usage", help="usage per project (from billing)")
    usage.add_argument("--since", type=_when, help="ISO time (default: 24 h ago)")
    usage.add_argument("--until", type=_when, help="ISO time (default: now)")
    accounts = sub.add_parser(
        "accounts",
        help="create each service's own least-privilege account (the transport URL's "
        "user administers the broker) and write each one's login URL",
    )
    accounts.add_argument("--secrets", type=Path, required=True, help="directory (kept 0600)")
    accounts.add_argument("--conductor", required=True, metavar="HOST")
    accounts.add_argument("--scheduler", required=True, metavar="HOST")
    accounts.add_argument("--billing", required=True, metavar="HOST")
    accounts.add_argument("--compute", required=True, action="append", metavar="HOST")
    accounts.add_argument(
        "--rotate-key",
        action="append",
        default=[],
        metavar="PRINCIPAL",
        help="etcd://: a new signing key for PRINCIPAL (its old public key stays trusted)",
    )
    accounts.add_argument(
        "--retire-old-keys",
        action="store_true",
        help="etcd://: stop trusting public keys that are no longer a principal's current key",
    )
    services = sub.add_parser(
        "services", help="the cloud's services: versions, last heartbeats, adverts"
    )
    services.add_argument("--json", action="store_true", help="print JSON for scripts")
    for command in sub.choices.values():  # global options after the subcommand too
        cfg.add_arguments(command, GLOBAL_OPTIONS, default=argparse.SUPPRESS)
        console.add_standard_options(command, default=argparse.SUPPRESS, version_flag=False)
    args = parser.parse_args(argv)
    return console.run(
        "rpclib-cloud",
        lambda: _command(args),
        debug=args.debug,
        settings={rpclib.TransportError: "--transport-url"},
    )


def _command(args: argparse.Namespace) -> int:
    """Run the parsed command; errors propagate to :func:`rpclib.console.run` (one line)."""
    config = cfg.load("cli", args, GLOBAL_OPTIONS)
    if config.transport_url == cfg.DEFAULT_TRANSPORT_URL:  # nothing given: no cloud to reach
        raise console.UsageError(
            "--transport-url: not given; pass the cloud's broker URL (--transport-url or "
            "RPCLIB_TRANSPORT_URL; `rpclib-cloud accounts` writes the admin's as admin.url)"
        )
    config.setup_logging()
    if args.command == "accounts":
        return _accounts(config.transport_url, args)
    with console.setting("--transport-url", (rpclib.TransportError,)):
        transport = rpclib.get_transport(config.transport_url)
    cloud = Cloud(transport)
    try:
        if args.command == "boot":
            guest = guest_data(args.key, args.user_data)
            instance = cloud.boot(
                args.name,
                wait=None if args.no_wait else args.timeout,
                vcpus=args.vcpus,
                memory_mb=args.memory,
                disk_gb=args.disk,
                image=image_location(args.image),
                project_id=args.project,
                strategy=args.strategy,
                **guest,
            )
            print(cloud.show_table(str(instance.uuid)))
            return 0 if instance.vm_state != "ERROR" else 1
        if args.command == "services":
            print(_services(cloud, transport, args.json))
        elif args.command == "list":
            print(cloud.list_table(args.project, args.all))
        elif args.command == "show":
            print(cloud.show_table(args.uuid))
        elif args.command == "delete":
            cloud.delete(args.uuid, wait=None if args.no_wait else args.timeout)
        elif args.command == "forget-host":
            queues = rpclib.get_transport(args.queues_url) if args.queues_url else None
            try:
                cloud.forget_host(args.host, queues)
            finally:
                if queues is not None:
                    queues.close()
        elif args.command == "usage":
            print(cloud.usage_table(*usage_window(args.since, args.until)))
        return 0
    finally:
        transport.close()


if __name__ == "__main__":
    sys.exit(main())
