"""A service at ``--log-level DEBUG`` shows its calls, not the broker client's chatter.

Each case runs a service-like process on the shared RabbitMQ broker (py-amqp
writes DEBUG lines for every connection and channel) that logs through
``ServiceConfig.setup_logging`` and makes one call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from typing import Any

import rpclib
from services.common.config import ServiceConfig

ServiceConfig(service="probe", host="h1", log_level="DEBUG").setup_logging()
url, topic = sys.argv[1], sys.argv[2]
with rpclib.get_transport(url) as transport:
    class Api:
        def echo(self, ctx: dict[str, Any], value: Any) -> Any:
            return value

    server = rpclib.RPCServer(transport, rpclib.Target(topic=topic, server="n1"), [Api()])
    server.start()
    client = rpclib.RPCClient(transport, rpclib.Target(topic=topic), timeout=10)
    assert client.call({"request_id": "req-7"}, "echo", value=1) == 1
    server.stop()
    server.wait(10)
"""


def run_probe(rabbit_url: str, tmp_path: Path, **env: str) -> list[str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = subprocess.run(
        [sys.executable, str(script), rabbit_url, f"t{uuid.uuid4().hex[:10]}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_debug_shows_one_line_per_call_and_no_amqp_chatter(rabbit_url: str, tmp_path: Path) -> None:
    lines = run_probe(rabbit_url, tmp_path)

    assert [line for line in lines if " DEBUG amqp" in line] == []
    [sent] = [line for line in lines if " DEBUG rpclib.client: call echo" in line]
    assert "ok in" in sent and "(request_id=req-7)" in sent
    [handled] = [line for line in lines if " DEBUG rpclib.server: handled call echo" in line]
    assert "(request_id=req-7)" in handled


def test_a_library_logger_can_be_asked_for(rabbit_url: str, tmp_path: Path) -> None:
    lines = run_probe(rabbit_url, tmp_path, RPCLIB_LOG_LEVELS="amqp=DEBUG")

    assert [line for line in lines if " DEBUG amqp" in line] != []


def test_a_bad_logger_level_entry_is_named() -> None:
    from services.common.config import logger_levels

    assert logger_levels(" amqp=debug, urllib3=INFO,") == {"amqp": "DEBUG", "urllib3": "INFO"}
    with pytest.raises(ValueError, match="entry 'amqp' is not LOGGER=LEVEL"):
        logger_levels("amqp")


def test_a_bad_logger_level_stops_the_service_with_one_line(rabbit_url: str) -> None:
    service = [sys.executable, "-m", "services.scheduler.service"]
    result = subprocess.run(
        [*service, "--transport-url", rabbit_url, "--host", "s1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RPCLIB_LOG_LEVELS": "amqp=LOUD"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rpclib-scheduler: error: RPCLIB_LOG_LEVELS entry 'amqp=LOUD' is not LOGGER=LEVEL "
        "(LEVEL one of DEBUG, INFO, WARNING, ERROR, CRITICAL)"
    ]
