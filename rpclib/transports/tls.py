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
_MAX_PEM_BYTES: Final = 1 << 20
"""A PEM file bigger than this is not a certificate bundle (a wrong path, likely)."""


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase (raised by the password callback)."""


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
    CAs are. The context requires TLS 1.2 or later and a verified chain. Each
    file must hold what its option says (a certificate, a key); an encrypted
    key is refused instead of OpenSSL prompting on a terminal for its
    passphrase (a service has nobody there to answer).
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
    context.check_hostname = verify  # the chain is verified either way
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        text = _read_pem(url, "ssl_ca", ca)
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise InvalidTransportURL(str(url), f"option ssl_ca={ca!r}: no PEM certificate in it")
        try:
            context.load_verify_locations(cadata=text)
        except (ssl.SSLError, ValueError) as exc:
            raise InvalidTransportURL(str(url), f"option ssl_ca={ca!r}: {exc}") from None
    if cert is not None:
        _load_client_certificate(url, context, cert, key)
    return TLSConfig(ca=ca, cert=cert, key=key, verify=verify, context=context)


def build_tls_context(url: TransportURL) -> ssl.SSLContext:
    """The checked ``ssl.SSLContext`` of ``url``'s TLS options (see :func:`tls_config`)."""
    return tls_config(url).context


def _load_client_certificate(
    url: TransportURL, context: ssl.SSLContext, cert: str, key: str | None
) -> None:
    cert_text = _read_pem(url, "ssl_cert", cert)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise InvalidTransportURL(str(url), f"option ssl_cert={cert!r}: no PEM certificate in it")
    if key is None:
        key_option, key_text = "ssl_cert", cert_text
        if "PRIVATE KEY-----" not in key_text:
            raise InvalidTransportURL(
                str(url),
                f"option ssl_cert={cert!r} holds no private key: give it with ssl_key",
            )
    else:
        key_option, key_text = "ssl_key", _read_pem(url, "ssl_key", key)
        if "PRIVATE KEY-----" not in key_text:
            raise InvalidTransportURL(str(url), f"option ssl_key={key!r}: no PEM private key in it")
    if "ENCRYPTED PRIVATE KEY-----" in key_text or "Proc-Type: 4,ENCRYPTED" in key_text:
        raise _encrypted(url, key_option, key or cert)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key, password=_refuse_passphrase)
    except _EncryptedKey:
        raise _encrypted(url, key_option, key or cert) from None
    except (OSError, ssl.SSLError) as exc:  # e.g. KEY_VALUES_MISMATCH
        names = "ssl_cert/ssl_key" if key is not None else "ssl_cert"
        raise InvalidTransportURL(str(url), f"option {names} ({cert!r}, {key!r}): {exc}") from None


def _read_pem(url: TransportURL, option: str, path: str) -> str:
    """The text of a PEM file, or InvalidTransportURL naming ``option``."""
    try:
        with open(path, "rb") as pem:
            raw = pem.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InvalidTransportURL(
            str(url), f"option {option}={path!r}: cannot read it ({reason})"
        ) from None
    if len(raw) > _MAX_PEM_BYTES:
        raise InvalidTransportURL(str(url), f"option {option}={path!r}: too big for a PEM file")
    return raw.decode("ascii", "replace")


def _refuse_passphrase() -> bytes:
    raise _EncryptedKey()


def _encrypted(url: TransportURL, option: str, path: str) -> InvalidTransportURL:
    return InvalidTransportURL(
        str(url),
        f"option {option}={path!r}: the private key is encrypted; give an unencrypted key "
        "(protected by file permissions)",
    )


__all__ = ["TLS_OPTIONS", "TLSConfig", "build_tls_context", "tls_config", "tls_wanted"]
