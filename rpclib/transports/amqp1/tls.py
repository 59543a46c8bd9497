"""TLS inside proton's engine for ``amqps://`` (or ``ssl=true``).

The driver feeds proton's ``Transport`` raw socket bytes itself, so TLS is
proton's ``SSL`` layer on that transport, configured by one ``SSLDomain`` per
driver from the URL's checked files (:mod:`rpclib.transports.tls`).

proton's peer-name check (``VERIFY_PEER_NAME``) matches the certificate's
DNS names (and common name) only, never an IP address entry: a URL naming the
broker by IP verifies only if the certificate carries that IP as a DNS name,
so the handshake error says so. ``ssl_verify=false`` is ``VERIFY_PEER``: the
chain is verified against the trusted CAs, the name is not.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final

from proton import SSL, SSLDomain, SSLException

from rpclib.exceptions import InvalidTransportURL, TransportError
from rpclib.transports.amqp1.options import PeerHost
from rpclib.transports.tls import TLSConfig

_OPENSSL_CODE: Final = re.compile(r"error:[0-9A-Fa-f]+:[^:]*::?")
"""OpenSSL's ``error:0A000086:SSL routines::`` prefix, noise in a message."""


def ssl_domain(tls: TLSConfig, url: str) -> Any:
    """The client ``SSLDomain`` for ``tls``; InvalidTransportURL if proton refuses a file,
    TransportError if this proton has no TLS.

    Without ``ssl_ca`` proton (OpenSSL) trusts the system's CAs. The key
    defaults to the certificate file, as with Python's ``load_cert_chain``
    (proton needs both paths).
    """
    if not SSL.present():
        raise TransportError(f"{url}: this python-qpid-proton was built without TLS support")
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    option = "ssl_ca"
    try:
        if tls.ca is not None:
            domain.set_trusted_ca_db(tls.ca)
        option = "ssl_verify"
        domain.set_peer_authentication(
            SSLDomain.VERIFY_PEER_NAME if tls.verify else SSLDomain.VERIFY_PEER
        )
        if tls.cert is not None:
            option = "ssl_cert/ssl_key" if tls.key is not None else "ssl_cert"
            domain.set_credentials(tls.cert, tls.key or tls.cert, None)
    except SSLException as exc:
        raise InvalidTransportURL(url, f"option {option}: proton refused it ({exc})") from None
    return domain


def start_tls(transport: Any, domain: Any, host: PeerHost, verify: bool) -> Any:
    """Put proton's TLS layer on ``transport`` for ``host`` (before any byte moves).

    The peer host name is both SNI and the name checked; an IP literal is not
    sent when nothing checks it (SNI carries DNS names only).
    """
    tls = SSL(transport, domain)
    if verify or not _is_ip(host.hostname):
        tls.peer_hostname = host.hostname
    transport.require_encryption(True)
    return tls


def failure(host: PeerHost, tls: TLSConfig, condition: Any, opened: bool) -> str:
    """What went wrong with TLS to ``host``, and what to check; ``opened``: whether the
    AMQP connection was up (else the handshake, or the broker's check of it, failed)."""
    text = str(getattr(condition, "description", None) or condition or "no reason given")
    text = _OPENSSL_CODE.sub("", text.removeprefix("SSL Failure: "))
    if opened:
        return f"TLS with {host.address} failed: {text}"
    why = f"TLS handshake with {host.address} failed: {text}"
    if "certificate required" in text:
        return f"{why} (the broker wants a client certificate: give ssl_cert and ssl_key)"
    if "alert" in text and ("unknown ca" in text or "bad certificate" in text):
        return f"{why} (the broker did not accept the client certificate in ssl_cert)"
    if "wrong version number" in text:
        return f"{why} (is that a TLS listener? amqps:// defaults to port 5671)"
    if "verify failed" not in text:
        return why
    signer = "a CA in ssl_ca" if tls.ca is not None else "a CA the system trusts (or ssl_ca)"
    if tls.verify and _is_ip(host.hostname):
        return (
            f"{why} (the broker's certificate must be signed by {signer} and carry "
            f"{host.hostname} as a DNS name: proton does not match IP address entries; "
            "connect by a host name the certificate names, or ssl_verify=false to check "
            "the chain only)"
        )
    named = " and name the host (ssl_verify=false skips the name check only)" if tls.verify else ""
    return f"{why} (the broker's certificate must be signed by {signer}{named})"


def _is_ip(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


__all__ = ["failure", "ssl_domain", "start_tls"]
