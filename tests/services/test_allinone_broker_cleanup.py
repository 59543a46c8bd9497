"""The main job on RabbitMQ removes what it made there: its accounts and its durable queues."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest

from rpclib.transports.rabbit import naming
from services import allinone
from tests.support.rabbit import BROKER, PASSWORD, USER, list_queues, rabbitmqctl

ROOT = Path(__file__).resolve().parents[2]
PRINCIPALS = {a.principal for a in allinone.HOSTS.accesses()}


def permitted(vhost: str) -> set[str]:
    """The users with permissions on ``vhost``."""
    out = rabbitmqctl("list_permissions", "-p", vhost, "-q", "--no-table-headers")
    return {line.split("\t")[0] for line in out.splitlines() if line.strip()}


def left_over(vhost: str) -> set[str]:
    """The cloud's principals still on the broker that hold nothing beyond ``vhost`` (a
    principal also holding another vhost, say a run's on ``/``, is that run's to remove)."""
    out = rabbitmqctl("list_users", "-q", "--no-table-headers")
    left = {line.split("\t")[0] for line in out.splitlines()} & PRINCIPALS
    return {
        user
        for user in left
        if not {
            line.split("\t")[0]
            for line in rabbitmqctl(
                "list_user_permissions", "-q", "--no-table-headers", user
            ).splitlines()
        }
        - {vhost}
    }


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def other_vhost() -> Iterator[str]:
    """Another vhost holding a queue named as the run's conductor queue."""
    vhost = f"rpclib-test-other-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    with amqp.Connection(BROKER, userid=USER, password=PASSWORD, virtual_host=vhost) as conn:
        conn.channel().queue_declare("rpclib.conductor", durable=True, auto_delete=False)
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """main() turns SIGTERM into SystemExit; give pytest its own handler back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.usefixtures("keep_sigterm")
def test_a_finished_run_removes_its_accounts_and_queues_and_no_other_vhosts(
    fresh_rabbit_url: str, other_vhost: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = allinone.main(["--transport-url", fresh_rabbit_url, "--state-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "== removed this run's" in out
    vhost = vhost_of(fresh_rabbit_url)
    assert permitted(vhost) == {USER}
    assert left_over(vhost) == set()
    assert set(list_queues(vhost)) == {naming.DEAD_LETTER_QUEUE}
    assert "rpclib.conductor" in list_queues(other_vhost)


def test_a_run_stopped_by_sigterm_removes_its_accounts_and_queues(
    fresh_rabbit_url: str, tmp_path: Path
) -> None:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "services.allinone", "--transport-url", fresh_rabbit_url]
    proc = subprocess.Popen(
        [*command, "--state-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: its services too, if it dies
    )
    try:
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:
            seen += line
            if "== booting instances" in line:
                break
        assert "== booting instances" in seen, seen
        vhost = vhost_of(fresh_rabbit_url)
        assert permitted(vhost) >= PRINCIPALS
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the run is left
        proc.wait()

    assert "== removed this run's" in out, seen + out
    assert permitted(vhost) == {USER}
    assert left_over(vhost) == set()
    assert set(list_queues(vhost)) == {naming.DEAD_LETTER_QUEUE}


def test_a_failed_clean_up_is_one_warning_line(
    fresh_rabbit_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = allinone.Processes(fresh_rabbit_url, tmp_path, "test:///default")
    rabbitmqctl("clear_permissions", "-p", vhost_of(fresh_rabbit_url), USER)  # admin locked out

    cloud.clean_up()  # raises nothing

    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert message.startswith("could not remove this run's accounts and queues: ")
    assert "\n" not in message
