"""rpclib-cloud: the user command. Boot, list, show and delete instances; show usage.

    rpclib-cloud boot vm1 --vcpus 1 --memory 256 --disk 1 --image cirros.qcow2 \
        --key ~/.ssh/id_ed25519.pub --user-data cloud-config.yaml
    rpclib-cloud list
    rpclib-cloud usage --since 2030-01-01T00:00:00+00:00

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import rpclib
from rpclib.ops_cli import topic_view
from services.billing.service import BillingAPI
from services.common import config as cfg
from services.common import guestdata
from services.common.accounts import CloudHosts, ProvisioningUnavailable, provision_kept
from services.common.tables import render
from services.conductor.rpcapi import ConductorAPI
from services.objects import Instance
from services.scheduler.rpcapi import SchedulerAPI

SETTLED = ("ACTIVE", "ERROR", "DELETED")


class Cloud:
    """The user's view of the services, over any transport."""

    def __init__(self, transport: rpclib.Transport, *, out: TextIO | None = None) -> None:
        self.scheduler = SchedulerAPI(transport)
        self.conductor = ConductorAPI(transport)
        self.billing = BillingAPI(transport)
        self.out = out if out is not None else sys.stdout
        self.ctx: dict[str, Any] = {"user": os.environ.get("USER", "demo")}

    def boot(self, name: str, *, wait: float | None = 300.0, **request: Any) -> Instance:
        """Boot an instance; with ``wait``, show progress until ACTIVE or ERROR."""
        instance = self.scheduler.boot(self.ctx, name=name, **request)
        self.out.write(f"{name}: placed on {instance.host} ({instance.uuid})\n")
        if wait:
            instance = self.wait_for(str(instance.uuid), lambda i: i.vm_state in SETTLED, wait)
        return instance

    def delete(self, uuid: str, *, wait: float | None = 300.0) -> Instance:
        instance = self.scheduler.delete(self.ctx, uuid)
        if wait:
            instance = self.wait_for(uuid, lambda i: i.vm_state in ("DELETED", "ERROR"), wait)
        return instance

    def wait_for(self, uuid: str, done: Callable[[Instance], bool], timeout: float) -> Instance:
        """Poll the conductor, printing the state as it changes (one line on a terminal)."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        last = ""
        tty = self.out.isatty()
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
            if time.monotonic() > deadline:
                raise TimeoutError(f"{instance.name} still {instance.vm_state} after {timeout:g}s")
            time.sleep(0.25)

    def list_table(self, project_id: str | None = None, include_deleted: bool = False) -> str:
        rows = [
            (
                str(i.uuid)[:8],
                i.name,
                i.project_id,
                i.host,
                i.vm_state,
                i.ip_address,
                i.flavor.vcpus,
                i.flavor.memory_mb,
                i.flavor.disk_gb,
            )
            for i in self.conductor.list_instances(self.ctx, project_id, include_deleted)
        ]
        return render(("uuid", "name", "project", "host", "state", "ip", "vcpus", "MB", "GB"), rows)

    def show_table(self, uuid: str) -> str:
        i = self.conductor.get_instance(self.ctx, uuid)
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


def guest_data(key: Path | None, user_data: Path | None) -> dict[str, str]:
    """``boot``'s key_data/user_data from files, checked here before anything is sent."""
    guest: dict[str, str] = {}
    if key is not None:
        guest["key_data"] = guestdata.check_public_key(key.read_text(errors="replace"))
    if user_data is not None:
        guest["user_data"] = guestdata.encode_user_data(user_data.read_bytes())
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
    cfg.add_arguments(parser, ("transport_url", "log_level"))
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
    show.add_argument("uuid")
    delete = sub.add_parser("delete", help="delete an instance")
    delete.add_argument("uuid")
    delete.add_argument("--no-wait", action="store_true")
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
    args = parser.parse_args(argv)
    config = cfg.load("cli", args, ("transport_url", "log_level"))
    config.setup_logging()
    if args.command == "accounts":
        return _accounts(config.transport_url, args)
    transport = rpclib.get_transport(config.transport_url)
    cloud = Cloud(transport)
    try:
        if args.command == "boot":
            guest = guest_data(args.key, args.user_data)
            instance = cloud.boot(
                args.name,
                wait=None if args.no_wait else 600.0,
                vcpus=args.vcpus,
                memory_mb=args.memory,
                disk_gb=args.disk,
                image=args.image,
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
            cloud.delete(args.uuid, wait=None if args.no_wait else 600.0)
        elif args.command == "usage":
            end = args.until or dt.datetime.now(dt.UTC)
            print(cloud.usage_table(args.since or end - dt.timedelta(days=1), end))
        return 0
    except rpclib.MessagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # remote errors re-raised as their own class (e.g. NoValidHost)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
