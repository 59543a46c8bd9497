"""etcd servers for the etcd transport's tests: real ``etcd`` processes on 127.0.0.1.

``etcd_server`` is one server for the whole session (free ports, a data dir
in a temp folder); tests share it and keep apart by key prefix
(``etcd_url`` gives each test its own). Tests that restart or compact etcd
use ``private_etcd``: a server of their module's own. Two more session
servers are secured:

- ``etcd_tls_server``: HTTPS only, client certificates required
  (``--client-cert-auth``), no authentication. Its certificate names
  ``localhost`` only (no IP), so a URL with 127.0.0.1 fails the hostname
  check unless ``ssl_verify=false``.
- ``etcd_auth_server``: authentication on (user ``root`` for the tests' own
  requests, user ``rpc`` whose role may read and write keys under
  ``/rpc-``), simple tokens that end after ``AUTH_TOKEN_TTL`` seconds unused.
  It serves HTTPS with client certificates and plain HTTP on a second port.

Certificates are generated with openssl in the session's temp dir
(``etcd_certs``: a CA, the server's and a client's; ``stranger_certs``: a CA
etcd does not trust, with a client certificate of its own).

Servers are started by this module and stopped by the pid it started
(SIGTERM, then SIGKILL), never by name; a parent-death signal and an atexit
hook catch a dying pytest. If etcd cannot start, the test fails with its log:
a missing etcd (or openssl) is an environment error, never a skip.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

HOST = "127.0.0.1"
TLS_HOST = "localhost"
"""The name in the test server certificate (the only one: 127.0.0.1 is not in it)."""
START_TIMEOUT = 30.0
ETCD = os.environ.get("RPCLIB_ETCD", "/usr/bin/etcd")
ROOT_USER, ROOT_PASSWORD = "root", "root-secret"
RPC_USER, RPC_PASSWORD = "rpc", "rpc-secret"
RPC_PREFIX = "rpc-"
"""Key prefix (after the leading ``/``) that user ``rpc`` may read and write."""
AUTH_TOKEN_TTL = 1
"""Seconds an unused token of ``etcd_auth_server`` lives (etcd checks every second or so)."""
AUTH_PROBLEMS = ("invalid auth token", "user name is empty", "revision of auth store is old")


class EtcdRequestError(RuntimeError):
    """etcd answered a test's own request with an error status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"etcd answered {status}: {text[:300]}")
        self.status = status
        self.text = text


# --- certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class EtcdCerts:
    """PEM files: a CA, a server certificate and client certificates it signed.

    The client certificate has no CommonName: with client certificates,
    authentication and the JSON gateway all on, etcd refuses requests whose
    certificate has one (``client_cn_cert`` has one, to show that).
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn_cert: Path
    client_cn_key: Path

    def client_options(self) -> dict[str, str]:
        """The ssl_* URL options that trust this CA and present this client certificate."""
        return {
            "ssl_ca": str(self.ca),
            "ssl_cert": str(self.client_cert),
            "ssl_key": str(self.client_key),
        }


def _openssl(folder: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the etcd test certificates")
    result = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def make_etcd_certs(folder: Path, name: str = "rpclib etcd test") -> EtcdCerts:
    """A fresh CA with a server (``localhost`` only) and client certificates (P-256 keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        folder, "req", "-x509", *ec, "-days", "7", "-subj", f"/CN={name} CA",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    leaves = {
        # clientAuth too: with --client-cert-auth, etcd 3.4's gateway presents the server
        # certificate to etcd's own gRPC server (and is refused without it)
        "server": (
            f"/CN={name} server",
            "serverAuth,clientAuth",
            f"subjectAltName=DNS:{TLS_HOST}\n",
        ),
        "client": (f"/O={name} client", "clientAuth", ""),
        "client-cn": (f"/CN={name} client", "clientAuth", ""),
    }
    for leaf, (subject, usage, extra) in leaves.items():
        (folder / f"{leaf}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n{extra}"
        )
        _openssl(
            folder, "req", "-new", *ec, "-subj", subject,
            "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr",
        )  # fmt: skip
        _openssl(
            folder, "x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "7",
            "-extfile", f"{leaf}.ext", "-out", f"{leaf}.pem",
        )  # fmt: skip
    return EtcdCerts(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        client_cn_cert=folder / "client-cn.pem",
        client_cn_key=folder / "client-cn.key",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)


class EtcdServer:
    """One etcd member with its own ports and data dir; start, stop, restart, compact.

    With ``certs`` it serves HTTPS (client certificates required) on
    ``port``; ``plain_port`` then adds a plain HTTP listener. ``enable_auth``
    turns authentication on; the tests' own requests (``request``, ``keys``,
    ``compact``) then authenticate as root.
    """

    def __init__(
        self,
        folder: Path,
        *,
        certs: EtcdCerts | None = None,
        plain_port: bool = False,
        auth_token_ttl: int | None = None,
        binary: str | None = None,
        name: str = "rpclib-test",
    ) -> None:
        if binary is not None:
            if not os.access(binary, os.X_OK):
                pytest.fail(f"etcd {binary} is missing or not executable")
            self.binary = binary
        elif not os.access(ETCD, os.X_OK):
            found = shutil.which("etcd")
            if found is None:
                pytest.fail(f"etcd is not installed ({ETCD}); install Debian's etcd-server")
            self.binary = found
        else:
            self.binary = ETCD
        self.name = name
        self.initial_cluster: str | None = None
        """``name=peer-url,...`` of every member when this one is part of a cluster."""
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "etcd.log"
        self.certs = certs
        self.port = _free_port()
        self.plain_port = _free_port() if certs is not None and plain_port else None
        self.peer_port = _free_port()
        self.auth_token_ttl = auth_token_ttl
        self.auth = False
        self.prefix_root = "t"
        """Default key prefixes start with this (``RPC_PREFIX`` once user rpc is limited to it)."""
        self._root_token: str | None = None
        self._admin_tls: ssl.SSLContext | None = None
        if certs is not None:
            self._admin_tls = ssl.create_default_context(cafile=str(certs.ca))
            self._admin_tls.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def tls(self) -> bool:
        return self.certs is not None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the main client listener (``localhost`` with TLS, for the cert)."""
        return f"{TLS_HOST if self.tls else HOST}:{self.port}"

    @property
    def plain_endpoint(self) -> str:
        """``host:port`` of plain HTTP (the only listener without TLS, else the extra one)."""
        if not self.tls:
            return f"{HOST}:{self.port}"
        if self.plain_port is None:
            raise AssertionError("this etcd serves HTTPS only")
        return f"{HOST}:{self.plain_port}"

    def url(
        self,
        prefix: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        plain: bool = False,
        client_cert: bool = True,
        query: Mapping[str, str] | None = None,
        **options: str,
    ) -> str:
        """A URL on this server under ``prefix`` (fresh if None).

        ``etcds://localhost:PORT`` trusting the test CA and presenting the
        client certificate (unless ``client_cert=False``) on a TLS server,
        ``etcd://127.0.0.1:PORT`` otherwise or with ``plain``; ``user`` and
        ``password`` go in front of the host. ``options`` add to (or
        replace) the TLS options, as do those in ``query``.
        """
        prefix = prefix or f"{self.prefix_root}{uuid.uuid4().hex[:10]}"
        given: dict[str, str] = {}
        if self.tls and not plain:
            scheme, endpoint = "etcds", self.endpoint
            assert self.certs is not None
            given = {"ssl_ca": str(self.certs.ca)}
            if client_cert:
                given = self.certs.client_options()
        else:
            scheme, endpoint = "etcd", self.plain_endpoint
        given.update(query or {})
        given.update(options)
        credentials = ""
        if user is not None or password is not None:
            credentials = f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"
        text = f"{scheme}://{credentials}{endpoint}/{prefix}"
        return text + (f"?{urlencode(given, safe='/')}" if given else "")

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def version(self) -> str:
        """The binary's version, e.g. ``3.5.16``."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("etcd Version:"):
                return line.split(":", 1)[1].strip()
        pytest.fail(f"{self.binary} --version said no version:\n{out}")

    def start(self) -> None:
        """Start the process and wait until it answers a (linearizable) read."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process (members of a cluster are all launched, then waited for)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://{HOST}:{self.port}"
        if self.plain_port is not None:
            client += f",http://{HOST}:{self.plain_port}"
        peer = self.peer_url
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            # password hashes at bcrypt's minimum cost: tests authenticate a lot
            "--bcrypt-cost", "4",
        ]  # fmt: skip
        if self.certs is not None:
            args += [
                "--cert-file", str(self.certs.server_cert),
                "--key-file", str(self.certs.server_key),
                "--trusted-ca-file", str(self.certs.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        if self.auth_token_ttl is not None:
            args += ["--auth-token-ttl", str(self.auth_token_ttl)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )

    def wait_ready(self) -> None:
        """Wait until etcd answers a read (in a cluster: once it has a leader)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException,
                                     EtcdRequestError):  # fmt: skip
                if self.request("kv/range", {"key": _b64("health")}) is not None:
                    return
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"etcd did not start on {self.endpoint}:\n{tail}")

    def enable_auth(self, users: Mapping[str, tuple[str, str]]) -> None:
        """Add root and ``users`` (name -> (password, key prefix to read and write)), auth on.

        Each user gets a role of its name granting read and write on keys
        starting with ``/<prefix>``; root gets the root role. (What
        ``etcdctl user add``, ``role grant-permission --prefix`` and ``auth
        enable`` do, through the gateway: etcdctl is not needed.)
        """
        self.request("auth/user/add", {"name": ROOT_USER, "password": ROOT_PASSWORD})
        self.request("auth/role/add", {"name": "root"})
        self.request("auth/user/grant", {"user": ROOT_USER, "role": "root"})
        for name, (password, prefix) in users.items():
            start = f"/{prefix}"
            end = start[:-1] + chr(ord(start[-1]) + 1)
            self.request("auth/user/add", {"name": name, "password": password})
            self.request("auth/role/add", {"name": name})
            perm = {"permType": "READWRITE", "key": _b64(start), "range_end": _b64(end)}
            self.request("auth/role/grant", {"name": name, "perm": perm})
            self.request("auth/user/grant", {"user": name, "role": name})
        self.request("auth/enable", {})
        self.auth = True

    def authenticate(self, user: str, password: str) -> str:
        """A token for ``user`` (through the tests' own connection)."""
        token = self._post("auth/authenticate", {"name": user, "password": password}, None)
        return str(token["token"])

    def stop(self) -> None:
        """Stop the process this object started (by its pid)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def request(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One JSON-gateway request (the tests' own view of etcd, not the driver's).

        Once auth is on it goes as root, authenticating again when the token ended.
        """
        if not self.auth:
            return self._post(path, payload, None)
        for attempt in range(2):
            if self._root_token is None:
                self._root_token = self.authenticate(ROOT_USER, ROOT_PASSWORD)
            try:
                return self._post(path, payload, self._root_token)
            except EtcdRequestError as exc:
                if attempt or not any(problem in exc.text for problem in AUTH_PROBLEMS):
                    raise
                self._root_token = None
        raise AssertionError("unreachable")

    def _post(self, path: str, payload: dict[str, Any], token: str | None) -> dict[str, Any]:
        connection: http.client.HTTPConnection
        if self.tls:
            connection = http.client.HTTPSConnection(
                TLS_HOST, self.port, timeout=10, context=self._admin_tls
            )
        else:
            connection = http.client.HTTPConnection(HOST, self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        try:
            connection.request("POST", f"/v3/{path}", body=json.dumps(payload), headers=headers)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise EtcdRequestError(response.status, body.decode("utf-8", "replace"))
        result: dict[str, Any] = json.loads(body)
        return result

    def revision(self) -> int:
        return int(self.request("kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self) -> int:
        """Compact away all history up to now; the revision compacted at."""
        revision = self.revision()
        self.request("kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def keys(self, prefix: str) -> dict[str, int]:
        """Key -> lease id of every key under ``/prefix/``."""
        start = f"/{prefix.strip('/')}/"
        end = start[:-1] + chr(ord(start[-1]) + 1)
        result = self.request(
            "kv/range", {"key": _b64(start), "range_end": _b64(end), "keys_only": True}
        )
        return {
            base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0))
            for kv in result.get("kvs", ())
        }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """The session's shared etcd server."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-"))
    server = EtcdServer(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def etcd_url(etcd_server: EtcdServer) -> str:
    """An etcd:// URL on the shared server under a key prefix no other test uses."""
    return etcd_server.url()


def etcd35_path() -> str:
    """etcd 3.5 from the trixie root (built once per machine); a failure, never a skip."""
    from tests.support.trixie import TrixieError, etcd_binary

    try:
        return etcd_binary()
    except TrixieError as exc:
        pytest.fail(f"etcd 3.5 is unavailable: {exc}")


GENERATIONS = {"3.4": None, "3.5": etcd35_path}
"""etcd generations the suites run against: Debian 12's etcd 3.4 and trixie's etcd 3.5."""


def generation_binary(generation: str) -> str | None:
    """The etcd binary of ``generation`` (None: the default, ``RPCLIB_ETCD`` or Debian's)."""
    find = GENERATIONS[generation]
    return find() if find is not None else None


def check_generation(server: EtcdServer, generation: str) -> None:
    """Fail unless ``server`` runs etcd ``generation`` (so no generation is tested twice)."""
    version = server.version()
    if not version.startswith(generation + "."):
        pytest.fail(f"{server.binary} is etcd {version}, not {generation}")


@pytest.fixture(scope="session")
def etcd35_server() -> Iterator[EtcdServer]:
    """The session's shared etcd 3.5 server (from the trixie root)."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd35-"))
    server = EtcdServer(folder, binary=etcd35_path())
    check_generation(server, "3.5")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", params=sorted(GENERATIONS))
def any_etcd_server(request: pytest.FixtureRequest) -> EtcdServer:
    """Each etcd generation's shared session server in turn (3.4, then 3.5)."""
    if request.param == "3.4":
        server: EtcdServer = request.getfixturevalue("etcd_server")
    else:
        server = request.getfixturevalue("etcd35_server")
    check_generation(server, request.param)
    return server


@pytest.fixture
def any_etcd_url(any_etcd_server: EtcdServer) -> str:
    """An etcd:// URL under a fresh key prefix on each generation's shared server."""
    return any_etcd_server.url()


@pytest.fixture(scope="session")
def etcd_certs(tmp_path_factory: pytest.TempPathFactory) -> EtcdCerts:
    """The session's test CA with the etcd server's and a client certificate."""
    return make_etcd_certs(tmp_path_factory.mktemp("etcd-certs"))


@pytest.fixture(scope="session")
def stranger_certs(tmp_path_factory: pytest.TempPathFactory) -> EtcdCerts:
    """A CA no test etcd trusts, with a client certificate of its own."""
    return make_etcd_certs(tmp_path_factory.mktemp("etcd-stranger-certs"), "stranger")


@pytest.fixture(scope="session")
def etcd_tls_server(etcd_certs: EtcdCerts) -> Iterator[EtcdServer]:
    """The session's etcd on HTTPS only, requiring client certificates; no authentication."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-tls-"))
    server = EtcdServer(folder, certs=etcd_certs)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_auth_server(etcd_certs: EtcdCerts) -> Iterator[EtcdServer]:
    """The session's etcd with authentication (users root and rpc), HTTPS and plain HTTP.

    Tokens end after ``AUTH_TOKEN_TTL`` seconds unused. User ``rpc`` may only
    touch keys under ``/rpc-``; default prefixes of ``url()`` start with it.
    """
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-auth-"))
    server = EtcdServer(folder, certs=etcd_certs, plain_port=True, auth_token_ttl=AUTH_TOKEN_TTL)
    server.start()
    server.enable_auth({RPC_USER: (RPC_PASSWORD, RPC_PREFIX)})
    server.prefix_root = RPC_PREFIX
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def private_etcd() -> Iterator[EtcdServer]:
    """An etcd server of the module's own, for tests that restart or compact it."""
    folder = Path(tempfile.mkdtemp(prefix="rpclib-etcd-private-"))
    server = EtcdServer(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
