"""Setup mistakes end a console script with one ``PROG: error: SETTING: ...`` line.

Each script runs as a real process (its entry point under ``python -c``, as
the installed console script calls it) against the real RabbitMQ and
PostgreSQL where the mistake needs them. Exit status 2 means the value is
malformed (nothing was contacted), 1 that using it failed; a traceback shows
only with ``--debug``.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.rabbit import BROKER

ROOT = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    """``name -> module:function`` of every console script setup.cfg declares."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines)}


SCRIPTS = console_scripts()


def run(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``script ARGS`` as a process, through its entry point; no RPCLIB_* from this test's env."""
    module, _, function = SCRIPTS[script].partition(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RPCLIB_")}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(result: subprocess.CompletedProcess[str], script: str, status: int) -> str:
    """The single error line ``script`` printed (asserting its form and exit status)."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if f"{script}: error: " in line]
    assert len(lines) == 1, result.stderr
    return lines[0].split(f"{script}: error: ", 1)[1]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_has_version(script: str) -> None:
    result = run(script, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "0.1.0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("foo://127.0.0.1/", "no transport driver for scheme 'foo'"),
        ("rabbit://guest:guest@127.0.0.1:99999/", "Port out of range"),
        ("rabbit://guest:guest@127.0.0.1:5672/?prefetc=5", "unknown option(s) prefetc"),
        ("127.0.0.1:5672", "missing scheme"),
    ],
    ids=["scheme", "port", "option", "no-scheme"],
)
def test_a_malformed_transport_url_is_one_line_and_exit_2(url: str, says: str) -> None:
    error = one_error_line(run("rpclib-cloud", "--transport-url", url, "list"), "rpclib-cloud", 2)
    assert error.startswith("--transport-url: ") and says in error


def test_a_wrong_password_on_the_real_broker_is_one_line_and_exit_1() -> None:
    url = f"rabbit://guest:not-the-password@{BROKER}/"
    error = one_error_line(run("rpclib-cloud", "--transport-url", url, "list"), "rpclib-cloud", 1)
    assert error.startswith("--transport-url: ") and "ACCESS_REFUSED" in error
    assert "not-the-password" not in error


def test_a_missing_vhost_on_the_real_broker_is_one_line_and_exit_1() -> None:
    url = f"rabbit://guest:guest@{BROKER}/no-such-vhost-here"
    error = one_error_line(run("rpclib-cloud", "--transport-url", url, "list"), "rpclib-cloud", 1)
    assert error.startswith("--transport-url: ") and "no-such-vhost-here" in error


def test_debug_shows_the_traceback() -> None:
    result = run("rpclib-cloud", "--debug", "--transport-url", "foo://127.0.0.1/", "list")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_go_before_or_after_the_subcommand(where: str) -> None:
    options = ["--transport-url", "foo://127.0.0.1/"]
    argv = [*options, "list"] if where == "before" else ["list", *options]
    error = one_error_line(run("rpclib-cloud", *argv), "rpclib-cloud", 2)
    assert error.startswith("--transport-url: no transport driver for scheme 'foo'")


def test_an_option_after_the_subcommand_does_not_undo_one_before() -> None:
    argv = ["--transport-url", "foo://127.0.0.1/", "list", "--log-level", "DEBUG"]
    error = one_error_line(run("rpclib-cloud", *argv), "rpclib-cloud", 2)
    assert "scheme 'foo'" in error


def test_an_unknown_strategy_is_refused_by_the_scheduler(rabbit_url: str) -> None:
    result = run("rpclib-scheduler", "--host", "s1", "--transport-url", rabbit_url,
                 "--strategy", "random")  # fmt: skip
    error = one_error_line(result, "rpclib-scheduler", 2)
    assert "--strategy" in error and "'random'" in error


def test_an_unknown_strategy_from_the_environment_is_named(rabbit_url: str) -> None:
    result = run("rpclib-scheduler", "--host", "s1", "--transport-url", rabbit_url,
                 env={"RPCLIB_STRATEGY": "random"})  # fmt: skip
    error = one_error_line(result, "rpclib-scheduler", 2)
    assert error == (
        "environment variable RPCLIB_STRATEGY: strategy must be one of spread, pack, got 'random'"
    )


def test_a_bad_value_in_the_environment_has_no_exception_name(rabbit_url: str) -> None:
    result = run("rpclib-conductor", "--host", "c1", "--transport-url", rabbit_url,
                 env={"RPCLIB_AUDIT_INTERVAL": "hourly"})  # fmt: skip
    error = one_error_line(result, "rpclib-conductor", 2)
    assert error.startswith("environment variable RPCLIB_AUDIT_INTERVAL: audit_interval must be")


def test_a_libvirt_uri_that_cannot_connect_names_the_setting(
    rabbit_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-host.xml"
    result = run("rpclib-compute", "--host", "n1", "--transport-url", rabbit_url,
                 "--state-dir", str(tmp_path), "--libvirt-uri", f"test://{missing}")  # fmt: skip
    error = one_error_line(result, "rpclib-compute", 1)
    assert error.startswith("--libvirt-uri: ") and str(missing) in error


def test_a_libvirt_uri_of_an_unknown_kind_is_a_usage_error(rabbit_url: str, tmp_path: Path) -> None:
    result = run("rpclib-compute", "--host", "n1", "--transport-url", rabbit_url,
                 "--state-dir", str(tmp_path), "--libvirt-uri", "bogus:///x")  # fmt: skip
    error = one_error_line(result, "rpclib-compute", 2)
    assert error.startswith("--libvirt-uri: ") and "bogus:///x" in error


def test_an_unreachable_postgresql_names_the_db_url(rabbit_url: str, tmp_path: Path) -> None:
    db_url = "postgresql+psycopg://postgres:secret@127.0.0.1:1/nova"  # nothing listens on port 1
    result = run("rpclib-conductor", "--host", "c1", "--transport-url", rabbit_url,
                 "--state-dir", str(tmp_path), "--db-url", db_url)  # fmt: skip
    error = one_error_line(result, "rpclib-conductor", 1)
    assert error.startswith("--db-url: postgresql+psycopg://postgres:***@127.0.0.1:1/nova: ")
    assert "Connection refused" in error and "secret" not in error


def test_a_missing_postgresql_database_names_the_db_url(rabbit_url: str, tmp_path: Path) -> None:
    db_url = "postgresql+psycopg://postgres@127.0.0.1:5432/rpclib_no_such_db"
    result = run("rpclib-conductor", "--host", "c1", "--transport-url", rabbit_url,
                 "--state-dir", str(tmp_path), "--db-url", db_url)  # fmt: skip
    error = one_error_line(result, "rpclib-conductor", 1)
    assert error.startswith("--db-url: ") and '"rpclib_no_such_db" does not exist' in error


@pytest.mark.parametrize("service", ["conductor", "scheduler", "billing", "compute"])
def test_a_service_without_a_transport_url_refuses_to_start(service: str, tmp_path: Path) -> None:
    """Without --transport-url a service would sit on its own in-process bus, serving nobody."""
    result = run(f"rpclib-{service}", "--host", "h1", env={"RPCLIB_STATE_DIR": str(tmp_path)})
    error = one_error_line(result, f"rpclib-{service}", 2)
    assert error.startswith("--transport-url: memory:// is an in-process bus")
    assert "RPCLIB_TRANSPORT_URL" in error and "rpclib-allinone" in error


def test_the_user_command_without_a_transport_url_says_what_to_pass() -> None:
    error = one_error_line(run("rpclib-cloud", "list"), "rpclib-cloud", 2)
    assert error.startswith("--transport-url: not given;") and "RPCLIB_TRANSPORT_URL" in error


def test_a_service_given_a_named_memory_bus_refuses_too() -> None:
    result = run("rpclib-scheduler", "--host", "s1", "--transport-url", "memory://cloud")
    error = one_error_line(result, "rpclib-scheduler", 2)
    assert error.startswith("--transport-url: memory://cloud is an in-process bus")


def test_the_all_in_one_still_runs_on_memory(tmp_path: Path) -> None:
    """The one process that hosts every service is where memory:// belongs (shown by a
    libvirt URI that fails only when the services, on the bus, start)."""
    missing = tmp_path / "no-such-host.xml"
    result = run("rpclib-allinone", "--libvirt-uri", f"test://{missing}",
                 "--state-dir", str(tmp_path))  # fmt: skip
    error = one_error_line(result, "rpclib-allinone", 1)
    assert error.startswith("--libvirt-uri: ") and str(missing) in error


def test_the_access_command_names_an_admin_url_it_cannot_use(tmp_path: Path) -> None:
    spec = tmp_path / "accounts.toml"
    spec.write_text('[[principal]]\nname = "compute-1"\ncall = ["conductor"]\n')
    result = run("rpclib-access", "apply", "foo://admin:pw@127.0.0.1/", str(spec),
                 "--secrets", str(tmp_path / "secrets"))  # fmt: skip
    error = one_error_line(result, "rpclib-access", 2)
    assert error.startswith("ADMIN_URL: ") and "foo://" in error
