"""Every command the README shows works from a fresh clone, as written.

The commands are read from README.md (each line of its ``sh`` blocks, and
each inline command), and each must be listed in COMMANDS with the test that
runs it, or why it is run elsewhere: a README edit that adds a command
without a test fails here. The important ones run for real in one fresh clone
of this tree (with its uncommitted edits), sharing the ``.venv/`` the first
command makes, as a new user would: ``scripts/run`` installs only what its
URL needs, so a missing extra fails the run.

What the tests add to the commands, and nothing more: HOME is a temporary
folder (so ``~/.rpclib`` and the services' state are this test's), RPCLIB_*
variables are cleared, broker URLs name a vhost of the test's own on the same
broker, pip keeps using the machine's cache, and the per-service walk-through
waits for the ``compute node1 up`` line the README tells its reader to wait
for before booting.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rpc.helpers import wait_until
from tests.support.rabbit import BROKER

ROOT = Path(__file__).resolve().parents[2]
README_RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
RUN_TIMEOUT = 600  # a cold pip cache builds libvirt-python

# README command -> the test here that runs it, or where else it is checked.
COMMANDS = {
    "scripts/run": "test_scripts_run_boots_the_story_on_the_embedded_bus",
    "scripts/test": "CI: .ci/run is exactly scripts/test",
    f"scripts/run --transport-url {README_RABBIT}": "test_scripts_run_on_rabbitmq",
    "bench/run": "not run by the suite: minutes of benchmarks in bench/.venv",
    "scripts/install": "test_the_per_service_walk_through",
    ". .venv/bin/activate": "test_the_per_service_walk_through",
    f"rpclib-cloud --transport-url {README_RABBIT} accounts --secrets ~/.rpclib "
    "--conductor c1 --scheduler s1 --billing b1 --compute node1": (
        "test_the_per_service_walk_through"
    ),
    'rpclib-conductor --transport-url "$(cat ~/.rpclib/conductor-c1.url)" --host c1 &': (
        "test_the_per_service_walk_through"
    ),
    'rpclib-scheduler --transport-url "$(cat ~/.rpclib/scheduler-s1.url)" --host s1 '
    "--strategy pack &": "test_the_per_service_walk_through",
    'rpclib-billing --transport-url "$(cat ~/.rpclib/billing-b1.url)" --host b1 &': (
        "test_the_per_service_walk_through"
    ),
    "mkdir -p ~/images && qemu-img create -q -f qcow2 ~/images/tiny.qcow2 64M": (
        "test_the_per_service_walk_through"
    ),
    'rpclib-compute --transport-url "$(cat ~/.rpclib/compute-node1.url)" --host node1 '
    "--image-dirs ~/images &": "test_the_per_service_walk_through",
    'export RPCLIB_TRANSPORT_URL="$(cat ~/.rpclib/admin.url)"': (
        "test_the_per_service_walk_through"
    ),
    "rpclib-cloud boot vm1 --vcpus 1 --memory 256 --disk 1 --image ~/images/tiny.qcow2": (
        "test_the_per_service_walk_through"
    ),
    "rpclib-cloud list": "test_the_per_service_walk_through",
    "rpclib-cloud usage": "test_the_per_service_walk_through",
    "rpclib-cloud show UUID": "a synopsis (UUID from boot); tests/services/test_cli.py",
    "rpclib-access print|apply ADMIN_URL SPEC --secrets DIR": (
        "a synopsis; tests/security/test_access.py runs the command"
    ),
    "python -m rpclib.fingerprint --objects mypkg.objects --write tests/object_hashes.json": (
        "a template (mypkg is the reader's package); tests/objects/test_fingerprint.py"
    ),
    "scripts/story": "tests/test_examples.py runs it",
    "rpclib-cloud services": "test_the_per_service_walk_through",
    "rpclib-cloud forget-host NODE --queues-url ADMIN_URL": (
        "a synopsis; tests/services/test_forget_host.py"
    ),
    "rpclib inspect URL [TOPIC] [--exchange rpclib] [--json]": "a synopsis; tests/ops/",
    "rpclib dead-letters URL list [--json]": "a synopsis; tests/ops/",
    "rpclib dead-letters URL show KEY": "a synopsis; tests/ops/",
    "rpclib dead-letters URL replay KEY...": "a synopsis; tests/ops/",
    "rpclib dead-letters URL purge KEY... | --all": "a synopsis; tests/ops/",
}

_COMMAND_SPAN = re.compile(r"^(\. |python -m |rpclib-\S+ )")  # a console script with arguments


def _is_command(span: str) -> bool:
    """An inline span that runs something: a repository script (``scripts/run ...``) or one
    of the shapes above; paths (``bench/``) and names (``rpclib-allinone``) are not."""
    first = ROOT / span.split()[0]
    return bool(_COMMAND_SPAN.match(span)) or (first.is_file() and os.access(first, os.X_OK))


def readme_commands(text: str) -> list[str]:
    """The commands README ``text`` shows: ``sh`` block lines and inline commands."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose.replace("\n", " ")):
        span = " ".join(span.split())
        if _is_command(span):
            commands.append(span)
    return list(dict.fromkeys(commands))


def test_every_readme_command_is_covered() -> None:
    shown = readme_commands((ROOT / "README.md").read_text())
    assert set(shown) == set(COMMANDS), (
        f"README commands without an entry: {sorted(set(shown) - set(COMMANDS))}; "
        f"entries no longer in the README: {sorted(set(COMMANDS) - set(shown))}"
    )
    tests = {name for name in globals() if name.startswith("test_")}
    for command, where in COMMANDS.items():
        if where.startswith("test_"):
            assert where in tests, f"{command!r}: no test {where}"


def test_the_first_screen_shows_run_and_test() -> None:
    first_block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert lines == ["scripts/run", "scripts/test"]


# --- running them in a fresh clone ---------------------------------------------------


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of this repository, with this tree's uncommitted edits and new files."""
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git checkout: the README tests clone it")
    dest = tmp_path_factory.mktemp("readme") / "rpclib"
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is not installed: the README tests clone the repository")
    subprocess.run([git, "clone", "-q", str(ROOT), str(dest)], check=True, timeout=120)
    listed = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source, target = ROOT / name, dest / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif target.exists():
            target.unlink()  # deleted in the work tree, not yet committed
    return dest


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def shell_env(home: Path) -> dict[str, str]:
    """A user's environment: HOME of the test's own, no RPCLIB_*, the machine's pip cache."""
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    drop = ("RPCLIB_", "VIRTUAL_ENV", "PYTHONPATH", "XDG_STATE_HOME", "XDG_CONFIG_HOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | {"HOME": str(home), "PIP_CACHE_DIR": pip_cache}


def sh(clone: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in bash in the clone; fails the test with its output if it fails."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, f"{script}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def story_ran(out: str) -> None:
    """scripts/run's story reached its end: every instance ACTIVE, one deleted, usage."""
    for name in ("web1", "web2", "db1", "batch1"):
        assert f"{name}: ACTIVE" in out, out
    assert "web2: DELETED" in out and "== usage (from billing's ledger)" in out, out


def test_scripts_run_boots_the_story_on_the_embedded_bus(
    clone: Path, shell_env: dict[str, str]
) -> None:
    story_ran(sh(clone, shell_env, "scripts/run").stdout)


def test_scripts_run_installs_for_the_url_in_the_environment(
    clone: Path, shell_env: dict[str, str]
) -> None:
    """RPCLIB_TRANSPORT_URL (read by the all-in-one) gets its extra installed too: the run
    reaches the broker (and is refused, quickly: a wrong password) instead of failing to
    import its driver. Runs before any test that installs the rabbit extra."""
    env = shell_env | {"RPCLIB_TRANSPORT_URL": f"rabbit://guest:wrong@{BROKER}/"}
    result = subprocess.run(
        ["scripts/run"], cwd=clone, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert result.returncode == 1, result.stderr
    assert "installing rpclib [services,rabbit]" in result.stdout
    assert result.stderr.startswith("rpclib-allinone: error: --transport-url: cannot connect")
    assert "ACCESS_REFUSED" in result.stderr


@pytest.mark.parametrize(
    ("url", "extra", "module"),
    [("etcd://127.0.0.1:2379/rpclib", "etcd,signing", "etcd3gw"),
     ("amqp1://guest:guest@127.0.0.1:5672/", "amqp1", "proton")],
    ids=["etcd", "amqp1"],
)  # fmt: skip
def test_scripts_run_installs_the_extra_its_url_needs(
    clone: Path, shell_env: dict[str, str], url: str, extra: str, module: str
) -> None:
    """The README's etcd:// and amqp1:// runs get their drivers' libraries (checked with
    --help, which stops after the install). Their stories are not run here: the etcd one
    runs in tests/etcd/test_etcd_allinone_signed.py (on the suite's own etcd, not on
    :2379), and amqp1:// makes accounts through RabbitMQ's management plugin, which the
    shared broker lacks. Runs before scripts/install installs every extra."""
    out = sh(clone, shell_env, f"scripts/run --transport-url {url} --help").stdout
    assert f"installing rpclib [services,{extra}]" in out
    sh(clone, shell_env, f".venv/bin/python -c 'import {module}'")


def test_scripts_run_on_rabbitmq(
    clone: Path, shell_env: dict[str, str], fresh_rabbit_url: str
) -> None:
    """Each service its own process on RabbitMQ; scripts/run installs the rabbit extra."""
    assert fresh_rabbit_url.startswith(README_RABBIT.rstrip("/"))  # the README's, on a vhost
    story_ran(sh(clone, shell_env, f"scripts/run --transport-url {fresh_rabbit_url}").stdout)


@pytest.fixture
def walk_through_vhost(fresh_rabbit_url: str) -> str:
    """The README's broker URL with a vhost of this test's own."""
    assert fresh_rabbit_url.startswith(f"rabbit://guest:guest@{BROKER}/")
    return fresh_rabbit_url


def walk_through() -> tuple[str, str]:
    """The README's per-service block, split where the reader waits for compute."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "rpclib-compute" in b)
    start, _, use = block.partition("export RPCLIB_TRANSPORT_URL")
    return start, "export RPCLIB_TRANSPORT_URL" + use


@pytest.fixture
def services_started(
    clone: Path, shell_env: dict[str, str], home: Path, walk_through_vhost: str
) -> Iterator[Path]:
    """The block up to the services, run in bash; yields the services' log; stops them."""
    start, _ = walk_through()
    start = start.replace(README_RABBIT, walk_through_vhost)
    log, pids = home / "services.log", home / "services.pids"
    with log.open("w") as out:
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"{start}\njobs -p > {pids}\n"],
            cwd=clone,
            env=shell_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    started = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    try:
        yield log
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for pid in started:
            wait_until(lambda pid=pid: not _alive(pid), 60, f"service process {pid} to stop")


def _alive(pid: int) -> bool:
    """``pid`` still runs (not gone, not a zombie awaiting its reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_the_per_service_walk_through(
    clone: Path, shell_env: dict[str, str], services_started: Path
) -> None:
    try:
        wait_until(lambda: "compute node1 up" in services_started.read_text(), 120, "compute")
    except AssertionError:
        pytest.fail(f"compute never logged 'compute node1 up':\n{services_started.read_text()}")
    _, use = walk_through()
    out = sh(clone, shell_env, f". .venv/bin/activate\n{use}").stdout
    assert "vm1: ACTIVE" in out, out
    listed = re.search(r"^[0-9a-f]{8}\s+vm1\s.*$", out, re.M)  # list's row for vm1
    assert listed is not None and listed.group(0).split()[3:5] == ["node1", "ACTIVE"], out
    assert "project" in out and "instances" in out  # the usage table
