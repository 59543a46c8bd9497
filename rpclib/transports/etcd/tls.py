"""TLS for the etcd transport: ``etcds://`` and the ``ssl*`` URL options.

The same options and meanings as the RabbitMQ driver's (``rabbits://``):

- ``ssl``: TLS on or off; true for the TLS scheme, where ``ssl=false`` is an
  error. The other options without TLS are an error too (they would be
  silently ignored otherwise).
- ``ssl_ca``: PEM bundle of the CAs to trust (default: the system's).
- ``ssl_cert``, ``ssl_key``: PEM client certificate and its key, for servers
  that require client certificates; the key may be inside ``ssl_cert``.
- ``ssl_verify``: false skips the hostname check only; the server's chain is
  still verified against the trusted CAs.

Every mistake is an InvalidTransportURL naming the option and the file,
raised while the URL is parsed (before anything connects). An encrypted key
is refused instead of OpenSSL prompting on the terminal for its passphrase.
Nothing here is specific to etcd except the option set; the scheme name is a
parameter.
"""

from __future__ import annotations

import ssl
from typing import Final

from rpclib.exceptions import InvalidTransportURL
from rpclib.transports.url import TransportURL

TLS_OPTIONS: Final = frozenset({"ssl", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify"})
_NEEDS_TLS: Final = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify")
_MAX_PEM_BYTES: Final = 1 << 20
"""A PEM file bigger than this is not a certificate bundle (a wrong path, likely)."""


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase (raised by the password callback)."""


def tls_wanted(url: TransportURL, tls_scheme: str) -> bool:
    """Whether ``url`` asks for TLS: its scheme is ``tls_scheme`` or ``ssl=true``."""
    scheme_tls = url.scheme == tls_scheme
    wanted = url.bool_option("ssl", scheme_tls)
    if scheme_tls and not wanted:
        raise InvalidTransportURL(
            str(url), f"option ssl=false contradicts the {tls_scheme}:// scheme"
        )
    if not wanted:
        given = [name for name in _NEEDS_TLS if name in url.options]
        if given:
            raise InvalidTransportURL(
                str(url),
                f"option(s) {', '.join(given)} need TLS (use {tls_scheme}:// or ssl=true)",
            )
    return wanted


def client_context(url: TransportURL) -> ssl.SSLContext:
    """The client TLS context from ``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``ssl_verify``."""
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
    return context


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
