"""The shared RabbitMQ broker (127.0.0.1:5672) for tests: a vhost of the session's own.

Tests that only need a broker use a fresh vhost on the machine's broker, so
they never see another run's queues. A test that cannot get one fails: a
missing broker is an environment error, never a skip.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BROKER = os.environ.get("RPCLIB_TEST_RABBIT", "127.0.0.1:5672")
USER, PASSWORD = "guest", "guest"


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl against the shared node; fail the test with its output on error."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.fail("rabbitmqctl is not installed: the RabbitMQ tests need the broker's tools")
    result = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[str]:
    """A vhost created for this test session and deleted after it."""
    vhost = f"rpclib-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rabbit_url(rabbit_vhost: str) -> str:
    """A rabbit:// URL for the session's vhost on the shared broker."""
    return f"rabbit://{USER}:{PASSWORD}@{BROKER}/{rabbit_vhost}"


def list_queues(vhost: str) -> dict[str, int]:
    """Queue name -> messages ready, in ``vhost``."""
    out = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name", "messages")
    queues: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            queues[parts[0]] = int(parts[1])
    return queues


@pytest.fixture
def fresh_rabbit_url() -> Iterator[str]:
    """A rabbit:// URL on a vhost of this test's own (for tests whose durable queues
    must not meet another test's)."""
    vhost = f"rpclib-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    yield f"rabbit://{USER}:{PASSWORD}@{BROKER}/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


@functools.lru_cache(maxsize=1)
def broker_log_path() -> Path:
    """The shared broker's main log file (where it logs the access it refuses)."""
    out = rabbitmqctl("eval", "rabbit:log_locations().")
    for path in re.findall(r'"(/[^"]+\.log)"', out):
        if not path.endswith("_upgrade.log"):
            return Path(path)
    raise RuntimeError(f"the shared RabbitMQ broker names no log file: {out!r}")
