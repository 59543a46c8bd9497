"""A private RabbitMQ node for tests that stop, restart or cut off their broker.

The shared broker (127.0.0.1:5672) must never be restarted, so tests that do
so get a node of their own: free ports on 127.0.0.1 (AMQP, TLS, Erlang
distribution), a temp dir with its data, logs, config, pid file and Erlang
cookie, and a generated CA with server and client certificates for a TLS
listener that requires client certificates.

The node is started once per session; the ``rabbit_node`` fixture hands it to
a test running (starting it again if an earlier test left it stopped), and
tests stop, restart or disconnect it through its API. The node runs as the
``rabbitmq`` user when the tests run as root. It is stopped by the pid this
module started (SIGTERM to the ``rabbitmq-server`` script, which stops the VM
gracefully), then every process of its tree that is left is killed. Teardown
runs at session end whatever the tests did; an ``atexit`` hook and a
parent-death signal catch a dying pytest. Call ``start``/``restart`` from the
main thread: the parent-death signal follows the thread that started the node.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

USER, PASSWORD = "guest", "guest"
HOST = "127.0.0.1"
START_TIMEOUT = float(os.environ.get("RPCLIB_TEST_NODE_START_TIMEOUT", "90"))
STOP_TIMEOUT = 30.0
# Debian's /usr/sbin scripts su to rabbitmq and redirect the output: use the real ones.
SBIN_DIRS = (os.environ.get("RPCLIB_RABBITMQ_SBIN", ""), "/usr/lib/rabbitmq/bin")
SYSTEM_EPMD_PORT = 4369
DIR_PREFIX = "rpclib-rabbit-"
# Every deprecated feature RabbitMQ 4.0.5 still has (`rabbitmqctl list_deprecated_features`
# lists classic_queue_mirroring too, already removed): a node made with deny_deprecated=True
# runs with all of them denied, as RabbitMQ 4.3 does by default. (4.3 also drops x-queue-mode
# and CQv1, which 4.0 has no switch for; rpclib declares neither.)
DEPRECATED_FEATURES = (
    "amqp_address_v1",
    "global_qos",
    "queue_master_locator",
    "ram_node_type",
    "transient_nonexcl_queues",
)


class NodeError(RuntimeError):
    """The private node could not be started, stopped or controlled."""


def _sbin(name: str) -> str:
    for folder in SBIN_DIRS:
        if folder and os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    found = shutil.which(name)
    if found is None:
        raise NodeError(f"{name} is not installed: the private-node tests need RabbitMQ")
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- processes, by pid ----------------------------------------------------------


def start_epmd(
    user: int | None = None, group: int | None = None, extra_groups: list[int] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """An epmd of our own on a free 127.0.0.1 port (when no system one runs): (process, port)."""
    epmd = shutil.which("epmd") or _sbin("epmd")
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [epmd, "-port", str(port), "-address", HOST],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user=user,
        group=group,
        extra_groups=extra_groups,
    )
    deadline = time.monotonic() + 10
    while not _port_open(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise NodeError(f"epmd did not come up on port {port}")
        time.sleep(0.05)
    return proc, port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, by its pid: SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of ``pid``, or None if it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def process_tree(root: int) -> dict[int, int]:
    """``root`` and its live descendants: pid -> start time (tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                children.setdefault(info[0], []).append(int(entry))
                starts[int(entry)] = info[1]
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in tree:
            tree[pid] = starts[pid]
            todo.extend(children.get(pid, ()))
    return tree


def alive(tree: dict[int, int]) -> list[int]:
    """The pids of ``tree`` that still run the same process."""
    return [pid for pid, start in tree.items() if (info := _stat(pid)) and info[1] == start]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# --- certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """PEM files of the test CA, the server and the client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def url_query(self) -> str:
        """``ssl_ca``, ``ssl_cert`` and ``ssl_key`` as a transport URL's query string."""
        return urlencode(
            {
                "ssl_ca": str(self.ca),
                "ssl_cert": str(self.client_cert),
                "ssl_key": str(self.client_key),
            },
            quote_via=quote,
            safe="/",
        )


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_certs(folder: Path) -> Certs:
    """A fresh CA and a server (localhost, 127.0.0.1) and client certificate it signed."""
    if shutil.which("openssl") is None:
        raise NodeError("the openssl command is needed to make the test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=rpclib test CA", "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    leaves = {
        "server": ("/CN=localhost", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        "client": ("/CN=rpclib-test-client", "clientAuth", ""),
    }
    for name, (subject, usage, extra) in leaves.items():
        (folder / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n{extra}"
        )
        _openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
            cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "30",
            "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=folder,
        )  # fmt: skip
    return Certs(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )


# --- the node -----------------------------------------------------------------------


class RabbitNode:
    """A RabbitMQ node of this process's own, on free 127.0.0.1 ports.

    ``restart()`` keeps the ports, data dir and node name, so durable queues
    and persistent messages survive it.
    """

    def __init__(
        self,
        root: Path | None = None,
        plugins: tuple[str, ...] = (),
        *,
        chroot: Path | None = None,
        deny_deprecated: bool = False,
        config: str = "",
        cookie: str | None = None,
        epmd_port: int | None = None,
    ) -> None:
        """A node on free ports; nothing runs until ``start()``.

        ``plugins``: plugins to enable (none by default). ``chroot``: run the
        RabbitMQ installed in that root (the trixie root's RabbitMQ 4) through
        ``chroot``; the node's files then live in the root's ``/tmp``.
        ``deny_deprecated``: deny every deprecated feature the node knows
        (RabbitMQ 4.3's defaults and beyond). ``config``: more ``rabbitmq.conf``
        lines. ``cookie``: the Erlang cookie (nodes of one cluster share it;
        default: a fresh one, so the node can talk to no other). ``epmd_port``:
        an epmd already running there (a cluster's nodes must share one); by
        default the machine's, or one this node starts.
        """
        self.plugins = plugins
        self.chroot = chroot
        self.deny_deprecated = deny_deprecated
        self.extra_config = config
        self.cookie = cookie or secrets.token_hex(16).upper()
        tmp = str(chroot / "tmp") if chroot is not None else None
        if root is None:
            _remove_stale_dirs(Path(tmp or tempfile.gettempdir()))
        self.dir = Path(root or tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=tmp))
        self.nodename = f"rpclib-test-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.port, self.tls_port, self.dist_port = free_ports(3)
        if chroot is not None:
            from tests.support.trixie import RABBITMQ_BIN, chroot_user

            self._run_as: tuple[int, int] | None = chroot_user(chroot, "rabbitmq")
            uid, gid = self._run_as
            # chroot needs root: the node drops to the root's rabbitmq user inside it.
            self._prefix = [
                "chroot", str(chroot), "setpriv", f"--reuid={uid}", f"--regid={gid}",
                "--clear-groups", "--pdeathsig", "TERM", "--",
            ]  # fmt: skip
            self._uid = self._gid = None
            self._groups: list[int] | None = None
            self._server = f"{RABBITMQ_BIN}/rabbitmq-server"
            self._ctl = f"{RABBITMQ_BIN}/rabbitmqctl"
        else:
            self._run_as = _node_user()
            self._prefix = []
            # Popen's user/group/extra_groups: None leaves them as they are.
            self._uid = self._run_as[0] if self._run_as else None
            self._gid = self._run_as[1] if self._run_as else None
            self._groups = [] if self._run_as else None
            self._server = _sbin("rabbitmq-server")
            self._ctl = _sbin("rabbitmqctl")
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._epmd_port = epmd_port or SYSTEM_EPMD_PORT
        self._shared_epmd = epmd_port is not None
        self._closed = False
        self.certs = make_certs(self.dir / "certs")
        self._write_config()
        atexit.register(self.close)

    # --- addresses ---

    @property
    def url(self) -> str:
        """rpclib URL of the default vhost over plain TCP."""
        return f"rabbit://{USER}:{PASSWORD}@{HOST}:{self.port}/"

    @property
    def amqp_url(self) -> str:
        """The same for plain kombu (``//`` is the default vhost)."""
        return f"amqp://{USER}:{PASSWORD}@{HOST}:{self.port}//"

    @property
    def tls_url(self) -> str:
        """rpclib URL of the TLS listener, with the client certificate."""
        return f"rabbits://{USER}:{PASSWORD}@{HOST}:{self.tls_port}/?{self.certs.url_query()}"

    def kombu_ssl(self) -> dict[str, object]:
        """py-amqp ``ssl`` options for the TLS listener with the client certificate."""
        return {
            "ca_certs": str(self.certs.ca),
            "certfile": str(self.certs.client_cert),
            "keyfile": str(self.certs.client_key),
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": HOST,
        }

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.nodename}.log"

    # --- lifecycle ---

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid this module started (the rabbitmq-server script), while it runs."""
        return self._proc.pid if self.running and self._proc else None

    def pids(self) -> dict[int, int]:
        """Every process of the running node (script, beam.smp, its helpers): pid -> start."""
        return process_tree(self._proc.pid) if self._proc is not None else {}

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the node and wait until it takes AMQP and TLS connections."""
        if self.running:
            return
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the node without waiting for it (several then boot in parallel).

        Call from the main thread (see the module docstring), then ``wait_ready``.
        """
        if self._closed:
            raise NodeError("this node was closed")
        if self.running:
            return
        self._ensure_epmd()
        cmd = [*self._prefix, self._server]
        if self._uid is not None and shutil.which("setpriv"):
            # If pytest dies without tearing down, the script gets SIGTERM and stops the VM.
            cmd = ["setpriv", "--pdeathsig", "TERM", "--", *cmd]
        with open(self.dir / "server.out", "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the launched node takes AMQP and TLS connections; stop it if it fails."""
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def kill9(self) -> int:
        """SIGKILL the node's Erlang VM (beam.smp) by pid, as a crash would; return that pid.

        Its script and helpers then exit on their own; ``stop()`` reaps what is left
        and ``start()`` brings the node back on the same ports and data.
        """
        beams = [pid for pid in alive(self.pids()) if process_name(pid) == "beam.smp"]
        if len(beams) != 1:
            raise NodeError(f"expected one beam.smp in {self.nodename}'s tree, found {beams}")
        os.kill(beams[0], signal.SIGKILL)
        return beams[0]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node by the pid started (graceful), then kill whatever of it is left."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        tree = process_tree(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        tree.update(process_tree(proc.pid))  # anything started while stopping
        deadline = time.monotonic() + 5  # helpers exit once beam.smp is gone
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in alive(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = alive(tree)
        if left:
            raise NodeError(f"processes of the node survived SIGKILL: {left}")

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same ports and data: durable queues survive."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the node and any epmd it started; remove its files."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            if self._epmd is not None:
                stop_process(self._epmd)
                self._epmd = None
            if os.environ.get("RPCLIB_KEEP_TEST_NODE"):
                print(f"private RabbitMQ node files kept in {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            atexit.unregister(self.close)

    # --- control ---

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <this node> *args``; NodeError with its output on failure."""
        result = subprocess.run(
            [*self._prefix, self._ctl, "-n", self.nodename, *args],
            cwd=self.dir,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._uid,
            group=self._gid,
            extra_groups=self._groups,
        )
        if result.returncode != 0:
            raise NodeError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return str(result.stdout)

    def ctl_script(self) -> Path:
        """An executable running this node's ``rabbitmqctl -n NODE`` with its arguments, for
        tools that take a rabbitmqctl path (rpclib.transports.rabbit.access's ``?rabbitmqctl=``)."""
        path = self.dir / "rabbitmqctl-node"
        as_user: list[str] = []
        if self._uid is not None:
            as_user = ["setpriv", f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups"]
            as_user.append("--")
        env = [f"{k}={v}" for k, v in self._env().items()]
        command = ["env", "-i", *env, *as_user, *self._prefix, self._ctl, "-n", self.nodename]
        path.write_text(
            f'#!/bin/sh\ncd {shlex.quote(str(self.dir))} && exec {shlex.join(command)} "$@"\n'
        )
        path.chmod(0o755)
        return path

    def close_all_connections(self, reason: str = "closed by the test") -> None:
        """Have the broker close every client connection (the node keeps running)."""
        self.rabbitmqctl("close_all_connections", "--global", reason)

    def connection_count(self) -> int:
        out = self.rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid")
        return sum(1 for line in out.splitlines() if line.strip())

    def log_tail(self, lines: int = 30) -> str:
        """The first errors and the last lines of the node's log and console, for messages."""
        parts = []
        for path in (self.log_file, self.dir / "server.out"):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if not text:
                continue
            first_errors = [line for line in text[:-lines] if "[error]" in line][:lines]
            gap = ["..."] if first_errors else []
            parts.append(f"--- {path}\n" + "\n".join(first_errors + gap + text[-lines:]))
        return "\n".join(parts) or "(no log written)"

    # --- internals ---

    def inside(self, path: Path) -> Path:
        """``path`` as the node sees it (inside its chroot, if it has one)."""
        if self.chroot is None:
            return path
        return Path("/") / path.relative_to(self.chroot)

    def _env(self) -> dict[str, str]:
        d = self.inside(self.dir)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(d / "home"),  # its own .erlang.cookie: cannot talk to the shared node
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(self._epmd_port),
        }
        return env

    def _write_config(self) -> None:
        d = self.dir
        c = Certs(*(self.inside(path) for path in vars(self.certs).values()))
        for sub in ("home", "log", "mnesia"):
            (d / sub).mkdir(exist_ok=True)
        cookie = d / "home" / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        (d / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (d / "rabbitmq-env.conf").write_text("# private test node: nothing from /etc\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {HOST}:{self.port}\n"
            f"listeners.ssl.default = {HOST}:{self.tls_port}\n"
            f"ssl_options.cacertfile = {c.ca}\n"
            f"ssl_options.certfile = {c.server_cert}\n"
            f"ssl_options.keyfile = {c.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            "loopback_users.guest = true\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
            + "".join(f"deprecated_features.permit.{name} = false\n" for name in self._denied())
            + self.extra_config
        )
        if self._run_as is not None:
            uid, gid = self._run_as
            for path in (d, *d.rglob("*")):
                os.chown(path, uid, gid)
        d.chmod(0o700)

    def _denied(self) -> tuple[str, ...]:
        return DEPRECATED_FEATURES if self.deny_deprecated else ()

    def _ensure_epmd(self) -> None:
        """Reuse the machine's epmd; start one of ours on a free port if there is none."""
        if self._shared_epmd or (self._epmd is not None and self._epmd.poll() is None):
            return
        if self._epmd is None and _port_open(SYSTEM_EPMD_PORT):
            self._epmd_port = SYSTEM_EPMD_PORT
            return
        self._epmd, self._epmd_port = start_epmd(
            user=self._uid, group=self._gid, extra_groups=self._groups
        )

    def _wait_ready(self, timeout: float) -> None:
        import kombu

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise NodeError(
                    f"RabbitMQ node {self.nodename} exited with code {code} while starting\n"
                    + self.log_tail()
                )
            try:
                with kombu.Connection(self.amqp_url, connect_timeout=2) as conn:
                    conn.connect()
                if _port_open(self.tls_port):
                    return
            except Exception as exc:  # not up yet: refused, reset, still booting
                last = exc
            time.sleep(0.25)
        raise NodeError(
            f"RabbitMQ node {self.nodename} took no connections on {HOST}:{self.port} "
            f"within {timeout:.0f}s (last error: {last!r})\n" + self.log_tail()
        )

    def __repr__(self) -> str:
        return f"<RabbitNode {self.nodename} amqp={self.port} tls={self.tls_port}>"


def _remove_stale_dirs(tmp: Path) -> None:
    """Remove node dirs left in ``tmp`` by killed sessions: owner pid gone, nothing using them."""
    stale = []
    for path in tmp.glob(f"{DIR_PREFIX}*-*"):
        owner = path.name[len(DIR_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            stale.append(path)
    if not stale:
        return
    in_use = set()
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        in_use.update(p for p in stale if str(p).encode() in cmdline)
    for path in stale:
        if path not in in_use:
            shutil.rmtree(path, ignore_errors=True)


def _node_user() -> tuple[int, int] | None:
    """(uid, gid) of the ``rabbitmq`` user when running as root; None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(os.environ.get("RPCLIB_RABBITMQ_USER", "rabbitmq"))
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def node_for_session(
    plugins: tuple[str, ...] = (), *, generation: int = 3, config: str = ""
) -> Iterator[RabbitNode]:
    """Start a private node with ``plugins``, yield it, stop and remove it (a fixture's body).

    ``generation=4``: RabbitMQ 4 from the trixie root, every deprecated feature
    denied. A node that cannot start fails the tests that need it, loudly.
    """
    from tests.support.trixie import TrixieError, trixie_root

    try:
        if generation == 4:
            node = RabbitNode(
                plugins=plugins, chroot=trixie_root(), deny_deprecated=True, config=config
            )
        else:
            node = RabbitNode(plugins=plugins, config=config)
    except (NodeError, TrixieError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        node.start()
    except NodeError as exc:
        node.close()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        node.close()


def running(node: RabbitNode) -> RabbitNode:
    """``node``, started again if an earlier test left it stopped."""
    if not node.running:
        try:
            node.start()
        except NodeError as exc:
            pytest.fail(str(exc), pytrace=False)
    return node


@pytest.fixture(scope="session")
def rabbit_node_session() -> Iterator[RabbitNode]:
    """The session's private RabbitMQ node, started once, stopped and removed at the end."""
    yield from node_for_session()


@pytest.fixture
def rabbit_node(rabbit_node_session: RabbitNode) -> RabbitNode:
    """The session's private node, running (restarted if an earlier test left it stopped)."""
    return running(rabbit_node_session)


@pytest.fixture(scope="session")
def rabbit4_node_session() -> Iterator[RabbitNode]:
    """The session's private RabbitMQ 4 node (trixie root), every deprecated feature denied."""
    yield from node_for_session(generation=4)


@pytest.fixture
def rabbit4_node(rabbit4_node_session: RabbitNode) -> RabbitNode:
    """The session's RabbitMQ 4 node, running (restarted if an earlier test left it stopped)."""
    return running(rabbit4_node_session)
