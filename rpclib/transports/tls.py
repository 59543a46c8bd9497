"""Client TLS from a transport URL: the ``ssl*`` options every TLS-capable driver shares.

``ssl`` (on by the driver's TLS scheme, e.g. ``rabbits://``), ``ssl_ca``,
``ssl_cert``, ``ssl_key`` and ``ssl_verify`` mean the same on every driver,
and a mistake (a contradiction with the scheme, TLS options without TLS, an
unreadable or mismatched PEM file) raises InvalidTransportURL naming the
option when the driver is built, before anything connects. The files are
checked by loading them into Python's ``ssl.SSLContext``, which drivers on
Python's TLS use as is; drivers whose TLS lives elsewhere (proton's engine)
read the checked paths from :class:`TLSConfig`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.url import TransportURL

TLS_OPTIONS: Final = frozenset({"ssl", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify"})
"""The URL options of this module, for a driver's known-options set."""
_NEED_TLS: Final = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """A URL's client TLS settings, every file already loaded once into ``context``.

    ``key`` is None when the key is in the ``cert`` file. ``verify`` False
    means no hostname check; the peer's certificate chain is verified anyway.
    """

    ca: str | None
    cert: str | None
    key: str | None
    verify: bool
    context: ssl.SSLContext


def tls_wanted(url: TransportURL, tls_scheme: str) -> bool:
    """Whether ``url`` asks for TLS: its scheme is ``tls_scheme`` or ``ssl=true``.

    ``ssl=false`` on the TLS scheme and TLS options without TLS are errors:
    either would otherwise connect in plaintext where TLS was meant.
    """
    scheme_tls = url.scheme == tls_scheme
    use_tls = url.bool_option("ssl", scheme_tls)
    if scheme_tls and not use_tls:
        raise InvalidTransportURL(
            str(url), f"option ssl=false contradicts the {tls_scheme}:// scheme"
        )
    if not use_tls:
        given = [name for name in _NEED_TLS if name in url.options]
        if given:
            raise InvalidTransportURL(
                str(url),
                f"option(s) {', '.join(given)} need TLS (use {tls_scheme}:// or ssl=true)",
            )
    return use_tls


def tls_config(url: TransportURL) -> TLSConfig:
    """Read and check ``ssl_ca``, ``ssl_cert``, ``ssl_key`` and ``ssl_verify``.

    With ``ssl_ca`` only that CA bundle is trusted, without it the system's
    CAs are. The context requires TLS 1.2 or later and a verified chain.
    """
    ca = url.option("ssl_ca")
    cert = url.option("ssl_cert")
    key = url.option("ssl_key")
    verify = url.bool_option("ssl_verify", True)
    if key is not None and cert is None:
        raise InvalidTransportURL(
            str(url), "option ssl_key needs ssl_cert (the client certificate)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = verify
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidTransportURL(str(url), f"option ssl_ca={ca!r}: {exc}") from None
    if cert is not None:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except (OSError, ssl.SSLError) as exc:
            names = "ssl_cert/ssl_key" if key is not None else "ssl_cert"
            raise InvalidTransportURL(str(url), f"option {names} ({cert!r}): {exc}") from None
    return TLSConfig(ca=ca, cert=cert, key=key, verify=verify, context=context)


def build_tls_context(url: TransportURL) -> ssl.SSLContext:
    """The checked ``ssl.SSLContext`` of ``url``'s TLS options (see :func:`tls_config`)."""
    return tls_config(url).context


__all__ = ["TLS_OPTIONS", "TLSConfig", "build_tls_context", "tls_config", "tls_wanted"]
