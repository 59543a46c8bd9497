"""The shared RabbitMQ broker as the RabbitMQ and AMQP 1.0 benchmarks use it.

``rabbitmqctl`` and ``rabbitmq-plugins`` calls that end the run with the
broker's own message when they fail, the broker's ``beam.smp`` pid (for CPU
per operation), and a vhost per run.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import uuid

BROKER = os.environ.get("RPCLIB_BENCH_RABBIT", "127.0.0.1:5672")


def _run(tool: str, *args: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        sys.exit(f"{tool} is not installed: the benchmark needs the broker's tools")
    result = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        sys.exit(f"{tool} {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


def rabbitmqctl(*args: str) -> str:
    return _run("rabbitmqctl", *args)


def enable_plugin(name: str) -> None:
    """Enable a broker plugin (online, idempotent)."""
    _run("rabbitmq-plugins", "enable", name)


def broker_pid() -> int:
    """The shared broker's beam.smp (from ``rabbitmqctl status``)."""
    match = re.search(r"OS PID: (\d+)", rabbitmqctl("status"))
    if match is None:
        sys.exit("could not find the broker's OS pid in rabbitmqctl status")
    return int(match.group(1))


class Vhost:
    """A vhost on the shared broker for this run, deleted afterwards (also at exit).

    Vhosts left by killed runs with the same ``prefix`` (their pid is gone) are
    deleted first.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        for line in rabbitmqctl("list_vhosts", "-q", "--no-table-headers", "name").splitlines():
            name = line.strip()
            owner = name[len(prefix) :].split("-", 1)[0]
            stale = owner.isdigit() and not os.path.exists(f"/proc/{owner}")
            if name.startswith(prefix) and stale:
                rabbitmqctl("delete_vhost", name)
        self.name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        rabbitmqctl("add_vhost", self.name)
        atexit.register(self.delete)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self._deleted = False

    def url(self, scheme: str) -> str:
        return f"{scheme}://guest:guest@{BROKER}/{self.name}"

    def delete(self) -> None:
        if not self._deleted:
            self._deleted = True
            rabbitmqctl("delete_vhost", self.name)
