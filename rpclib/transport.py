"""The Transport: one driver plus what clients and servers share over it."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from rpclib.directory import Directory
from rpclib.envelope import DEFAULT_MAX_SIZE
from rpclib.exceptions import InvalidTransportURL, TransportError
from rpclib.pipeline import LOG as PIPELINE_LOG
from rpclib.pipeline import SendPipeline
from rpclib.replies import ReplyRouter
from rpclib.transports import load_driver
from rpclib.transports.base import Driver
from rpclib.transports.url import TransportURL, parse_url

if TYPE_CHECKING:
    from rpclib.signing import Signing

SIGNING_OPTIONS = frozenset({"signing_key", "signing_trust", "signing_principal"})
"""URL options :func:`get_transport` takes for signing (``rpclib.signing.URL_OPTIONS``)."""


class Transport:
    """A connected driver with the shared reply inbox and server directory.

    Clients and servers on one transport share its connections; it is
    thread-safe. Close it when done (or use it as a context manager).
    """

    def __init__(
        self,
        driver: Driver,
        *,
        default_exchange: str = "rpclib",
        max_message_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if not default_exchange:
            raise ValueError("default_exchange must be a non-empty string")
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.driver = driver
        self.default_exchange = default_exchange
        self.max_message_size = max_message_size
        self._replies: ReplyRouter | None = None
        self._directory: Directory | None = None
        self._pipeline: SendPipeline | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def url(self) -> TransportURL:
        return self.driver.url

    @property
    def replies(self) -> ReplyRouter:
        """The reply inbox shared by every client of this transport."""
        if self._replies is None:
            with self._lock:
                if self._replies is None:
                    self._replies = ReplyRouter(self.driver, max_size=self.max_message_size)
        return self._replies

    @property
    def directory(self) -> Directory:
        """Live servers' adverts, for ``version_cap="auto"``."""
        if self._directory is None:
            with self._lock:
                if self._directory is None:
                    self._directory = Directory(self.driver)
        return self._directory

    @property
    def pipeline(self) -> SendPipeline:
        """Pipelined at-least-once casts in flight (clients made with ``pipelined=True``)."""
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    self._pipeline = SendPipeline(self.driver)
        return self._pipeline

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every pipelined cast is stored; see :meth:`SendPipeline.flush`."""
        if self._pipeline is not None:
            self._pipeline.flush(timeout)

    def close(self, flush_timeout: float = 30.0) -> None:
        """Flush pipelined casts (up to ``flush_timeout`` s), then close the reply inbox,
        advert watches and the driver. Casts still unconfirmed then are logged as lost."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            replies, directory, pipeline = self._replies, self._directory, self._pipeline
        if pipeline is not None:
            try:
                pipeline.flush(flush_timeout)
            except (TimeoutError, TransportError) as exc:
                PIPELINE_LOG.error("closing %s: %s", self, exc)
        if replies is not None:
            replies.close()
        if directory is not None:
            directory.close()
        self.driver.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Transport {self.url}>"


def get_transport(
    url: str,
    *,
    default_exchange: str = "rpclib",
    max_message_size: int = DEFAULT_MAX_SIZE,
    signing: Signing | None = None,
) -> Transport:
    """Connect to the transport named by ``url``; its scheme picks the driver.

    ``memory://`` (in-process), ``rabbit://``, ``amqp1://``, ``etcd://`` or any
    scheme a third-party driver registers. A bad URL or unknown scheme raises
    an error naming it. ``signing`` (:class:`rpclib.signing.Signing`, the
    ``signing`` extra) seals every message sent with this process's key and
    accepts only messages signed by keys its trust store holds, each with its
    signer as the authenticated sender (docs/security.md).

    The same can be configured in the URL, for any scheme:
    ``?signing_key=PATH&signing_trust=DIR`` (and ``signing_principal=NAME``
    where the URL names no user; see :func:`rpclib.signing.signing_from_url`).
    A bad signing setting raises :class:`InvalidTransportURL` naming it.
    """
    parsed = parse_url(url)
    if SIGNING_OPTIONS & parsed.options.keys():
        if signing is not None:
            raise InvalidTransportURL(
                str(parsed), "signing options in the URL and signing= given too: use one"
            )
        try:
            from rpclib.signing import signing_from_url
        except ImportError as exc:
            raise TransportError(
                f"signing_key= needs the signing extra ({exc}): pip install 'rpclib[signing]'"
            ) from exc
        parsed, signing = signing_from_url(parsed)
    driver = load_driver(parsed)
    if signing is not None:
        from rpclib.signing import SigningDriver

        driver = SigningDriver(driver, signing)
    return Transport(
        driver,
        default_exchange=default_exchange,
        max_message_size=max_message_size,
    )
