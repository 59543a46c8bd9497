"""rpclib-cloud: the user command. Boot, list, show and delete instances; show usage.

    rpclib-cloud boot vm1 --vcpus 1 --memory 256 --disk 1 --image cirros.qcow2
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
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import rpclib
from rpclib import console
from services.billing.service import BillingAPI
from services.common import config as cfg
from services.common.accounts import CloudHosts, ProvisioningUnavailable, provision_kept
from services.common.tables import render
from services.conductor.rpcapi import ConductorAPI
from services.objects import Instance
from services.scheduler.rpcapi import SchedulerAPI

SETTLED = ("ACTIVE", "ERROR", "DELETED")
GLOBAL_OPTIONS = ("transport_url", "log_level")  # accepted before or after the subcommand


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


def _when(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _accounts(url: str, args: argparse.Namespace) -> int:
    """``rpclib-cloud accounts``: provision the cloud's accounts; print where each login is."""
    hosts = CloudHosts(args.conductor, args.scheduler, args.billing, tuple(args.compute))
    try:
        files = provision_kept(url, hosts, args.secrets)
    except (ProvisioningUnavailable, ValueError, OSError, rpclib.MessagingError) as exc:
        print(f"rpclib-cloud: error: {exc}", file=sys.stderr)
        return 1
    print(render(("principal", "login URL file"), [(p, str(f)) for p, f in files.items()]))
    return 0


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
            instance = cloud.boot(
                args.name,
                wait=None if args.no_wait else 600.0,
                vcpus=args.vcpus,
                memory_mb=args.memory,
                disk_gb=args.disk,
                image=args.image,
                project_id=args.project,
                strategy=args.strategy,
            )
            print(cloud.show_table(str(instance.uuid)))
            return 0 if instance.vm_state != "ERROR" else 1
        if args.command == "list":
            print(cloud.list_table(args.project, args.all))
        elif args.command == "show":
            print(cloud.show_table(args.uuid))
        elif args.command == "delete":
            cloud.delete(args.uuid, wait=None if args.no_wait else 600.0)
        elif args.command == "usage":
            end = args.until or dt.datetime.now(dt.UTC)
            print(cloud.usage_table(args.since or end - dt.timedelta(days=1), end))
        return 0
    finally:
        transport.close()


if __name__ == "__main__":
    sys.exit(main())
