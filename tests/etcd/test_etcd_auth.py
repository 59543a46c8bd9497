"""etcd v3 authentication: user and password in the URL, tokens that end, clear refusals.

The session's ``etcd_auth_server`` has auth on (user ``rpc`` may read and
write keys under ``/rpc-``) and tokens that end after ``AUTH_TOKEN_TTL``
seconds unused. These tests use its plain HTTP port (TLS with auth is the
secure contract suite's); the last one restarts it, which invalidates every
token etcd gave.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from rpclib.exceptions import TransportError
from rpclib.transports import load_driver
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.etcd import EtcdDriver
from rpclib.transports.etcd.client import (
    KV,
    AuthenticationFailed,
    NotAuthorized,
    TLSRefused,
    b64,
)
from rpclib.transports.etcd.watch import Event
from tests.etcd.counting import Counter
from tests.etcd.etcd_proxy import Proxy
from tests.etcd.secure_workload import call_and_cast
from tests.support.etcd import (
    AUTH_TOKEN_TTL,
    RPC_PASSWORD,
    RPC_PREFIX,
    RPC_USER,
    EtcdCerts,
    EtcdServer,
)

WAIT = 20.0
TOKEN_GONE = AUTH_TOKEN_TTL + 1.6
"""Seconds after which an unused token has surely ended (etcd expires them about each second)."""


def auth_url(server: EtcdServer, prefix: str | None = None, **options: str) -> str:
    return server.url(prefix, user=RPC_USER, password=RPC_PASSWORD, plain=True, query=options)


def etcd_driver(url: str) -> EtcdDriver:
    driver = load_driver(url)
    assert isinstance(driver, EtcdDriver)
    return driver


@pytest.fixture
def etcd(etcd_auth_server: EtcdServer) -> EtcdServer:
    etcd_auth_server.start()  # in case the restart test failed half-way
    return etcd_auth_server


@pytest.fixture
def proxy(etcd: EtcdServer) -> Iterator[Proxy]:
    assert etcd.plain_port is not None
    p = Proxy(etcd.plain_port)
    yield p
    p.close()


def test_call_and_at_least_once_cast_with_user_and_password(etcd: EtcdServer) -> None:
    url = auth_url(etcd, f"{RPC_PREFIX}{uuid.uuid4().hex[:8]}")
    assert url.startswith(f"etcd://{RPC_USER}:")
    call_and_cast(url, url)


@pytest.mark.parametrize(("user", "password"), [(RPC_USER, "wrong-pw"), ("nobody", "wrong-pw")])
def test_wrong_credentials_fail_at_construction_naming_the_user(
    etcd: EtcdServer, user: str, password: str
) -> None:
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as excinfo:
        load_driver(etcd.url(user=user, password=password, plain=True))
    assert time.monotonic() - started < 3.0, "wrong credentials were retried"
    text = str(excinfo.value)
    assert f"refused user {user!r}" in text and "wrong user name or password" in text, text
    assert password not in text


def test_missing_credentials_fail_at_construction_saying_so(etcd: EtcdServer) -> None:
    with pytest.raises(NotAuthorized, match="give user:password in the URL"):
        load_driver(etcd.url(plain=True))


def test_a_prefix_the_users_role_does_not_cover_fails_at_construction(etcd: EtcdServer) -> None:
    with pytest.raises(NotAuthorized) as excinfo:
        load_driver(auth_url(etcd, "elsewhere"))
    text = str(excinfo.value)
    assert "permission denied" in text and repr(RPC_USER) in text and "/elsewhere/" in text


def test_a_client_certificate_with_a_common_name_is_refused_clearly_over_tls(
    etcd: EtcdServer, etcd_certs: EtcdCerts
) -> None:
    """etcd's gateway refuses it whenever auth is on (the CN would not be the user)."""
    url = etcd.url(
        user=RPC_USER,
        password=RPC_PASSWORD,
        ssl_cert=str(etcd_certs.client_cn_cert),
        ssl_key=str(etcd_certs.client_cn_key),
    )
    with pytest.raises(TLSRefused, match="client certificate without a CN"):
        load_driver(url)


def test_credentials_against_an_etcd_without_auth_are_accepted(etcd_server: EtcdServer) -> None:
    """As etcd's own client does: no token until etcd asks for one."""
    driver = etcd_driver(etcd_server.url(user="someone", password="pw"))
    try:
        assert driver.client.token is None
        driver.declare(Address("ex", "no-auth"))
    finally:
        driver.close()


def test_requests_and_watches_keep_working_after_tokens_end(etcd: EtcdServer, proxy: Proxy) -> None:
    """Tokens end while both drivers idle; then every stream breaks and must be re-opened.

    The consumer reaches etcd through a proxy that cuts its connections:
    its box and queue watches re-open with an ended token (etcd cancels
    such a watch), authenticate again and resume; the sender's and the
    consumer's requests (sends, claims, acks, the reply) re-authenticate too.
    """
    prefix = f"{RPC_PREFIX}{uuid.uuid4().hex[:8]}"
    consumer = etcd_driver(
        f"etcd://{RPC_USER}:{RPC_PASSWORD}@{proxy.endpoint}/{prefix}?retry_backoff=0.05"
    )
    sender = etcd_driver(auth_url(etcd, prefix))
    address = Address("ex", "tokens")
    got = Counter(WAIT)
    replies: queue.Queue[bytes] = queue.Queue()
    try:
        subscription = consumer.listen(address, got)
        inbox = consumer.open_inbox(replies.put)
        sender.send(address, b"before", guarantee=Guarantee.AT_LEAST_ONCE)
        got.wait_for(1)
        watch = subscription._watch  # type: ignore[attr-defined]
        box_watch = consumer._box_watch
        assert watch is not None and box_watch is not None
        logins = (consumer.client.authentications, sender.client.authentications)
        reconnects = (watch.reconnects, box_watch.reconnects)

        time.sleep(TOKEN_GONE)  # nobody uses a token: etcd forgets them both
        proxy.cut()  # every stream of the consumer must be re-opened, with a new token

        sender.send(address, b"after", guarantee=Guarantee.AT_LEAST_ONCE)
        sender.send_to_inbox(inbox.address, b"reply")
        got.wait_for(2)
        assert replies.get(timeout=WAIT) == b"reply"
        assert got.seen == {b"before": 1, b"after": 1}
        assert consumer.client.authentications > logins[0]
        assert sender.client.authentications > logins[1]
        assert watch.reconnects > reconnects[0] and box_watch.reconnects > reconnects[1]
    finally:
        consumer.close()
        sender.close()


def test_casts_keep_flowing_while_etcd_restarts_and_forgets_every_token(
    etcd: EtcdServer,
) -> None:
    """A sender casts without pause while etcd restarts: every token it gave is gone after."""
    prefix = f"{RPC_PREFIX}{uuid.uuid4().hex[:8]}"
    url = auth_url(etcd, prefix, retry_backoff="0.05", retry_backoff_max="0.5")
    consumer, sender = etcd_driver(url), etcd_driver(url)
    address = Address("ex", "restart")
    got = Counter(WAIT)
    sent: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def cast() -> None:
        try:
            while not stop.is_set():
                sender.send(address, b"%d" % len(sent), guarantee=Guarantee.AT_LEAST_ONCE)
                sent.append(len(sent))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def wait_sent(count: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(sent) < count and not errors:
            assert time.monotonic() < deadline, f"only {len(sent)} casts sent"
            time.sleep(0.01)

    casting = threading.Thread(target=cast)
    try:
        consumer.listen(address, got)
        casting.start()
        wait_sent(50)
        logins = (consumer.client.authentications, sender.client.authentications)
        etcd.restart()  # simple tokens live in etcd's memory only
        wait_sent(len(sent) + 50)
        stop.set()
        casting.join(WAIT)
        assert not errors, errors
        got.wait_for(len(sent))
        assert got.seen == {b"%d" % n: 1 for n in sent}
        assert consumer.client.authentications > logins[0]
        assert sender.client.authentications > logins[1]
    finally:
        stop.set()
        casting.join(WAIT)
        consumer.close()
        sender.close()


def test_a_watch_refused_for_its_token_authenticates_again_and_delivers(
    etcd: EtcdServer,
) -> None:
    """etcd answers a watch it refuses with created *and* canceled: not a working watch."""
    driver = etcd_driver(auth_url(etcd))
    prefix = f"{driver.options.prefix}refused/"
    sink = _StaleTokenSink(driver)
    watch = driver.make_watch(prefix, sink, "refused")
    try:
        logins = driver.client.authentications
        watch.start()  # reads the prefix; the sink then plants an ended token for the stream
        driver.client.call("kv/put", {"key": b64(f"{prefix}k"), "value": b64("v")})
        assert sink.keys.get(timeout=WAIT) == f"{prefix}k"
        assert driver.client.authentications > logins
    finally:
        watch.stop()
        driver.close()


class _StaleTokenSink:
    def __init__(self, driver: EtcdDriver) -> None:
        self.driver = driver
        self.keys: queue.Queue[str] = queue.Queue()

    def snapshot(self, kvs: list[KV], revision: int) -> None:
        self.driver.client._token = "ended-token"  # as if etcd had forgotten it

    def events(self, events: list[Event]) -> None:
        for event in events:
            self.keys.put(event.kv.key)

    def connection(self, state: str) -> None:
        pass


def test_an_error_that_is_not_about_auth_is_not_retried(etcd: EtcdServer) -> None:
    driver = etcd_driver(auth_url(etcd))
    try:
        logins = driver.client.authentications
        with pytest.raises(TransportError, match="rejected"):
            driver.client.call("kv/range", {"key": "not base64!"})
        assert driver.client.authentications == logins
    finally:
        driver.close()
