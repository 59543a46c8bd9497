"""What a user hands an instance at boot: an SSH public key and user data.

Both are checked before anything is created (by the user command, then again
by the scheduler and the conductor, which cannot trust their callers to have
done it), so a bad one is refused in one line and no instance row exists:

- the key must parse as an OpenSSH public key (``cryptography``'s
  ``load_ssh_public_key``; no hand-written parser), one line, kept as given
  minus surrounding blanks;
- user data travels and is stored base64-encoded, as Nova's does, and is
  refused above :data:`MAX_USER_DATA` characters of base64 (Nova's 64 KiB).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

MAX_USER_DATA = 65535
"""Base64 characters of user data at most (Nova's limit: about 48 KiB before encoding)."""
MAX_KEY = 16384
"""Characters of a public key line at most (an 8192-bit RSA key is about 1.4 KB)."""


class BadGuestData(ValueError):
    """A key or user data that cannot be given to an instance; the message says why."""


def check_public_key(text: str) -> str:
    """The key line, stripped, if it is one valid OpenSSH public key (BadGuestData if not)."""
    line = text.strip()
    if not line:
        raise BadGuestData("the SSH public key is empty")
    if len(line) > MAX_KEY:
        raise BadGuestData(f"the SSH public key is {len(line)} characters (at most {MAX_KEY})")
    if "\n" in line or "\r" in line:
        raise BadGuestData("the SSH public key must be one line (one key)")
    try:
        load_ssh_public_key(line.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        kind = line.split()[0][:40]
        raise BadGuestData(
            f"not a valid OpenSSH public key (type {kind!r}): {exc}; "
            "give the .pub file (e.g. from ssh-keygen), not the private key"
        ) from None
    return line


def encode_user_data(raw: bytes) -> str:
    """``raw`` base64-encoded, refused (BadGuestData) when the encoding is too long."""
    return check_user_data(base64.b64encode(raw).decode("ascii"))


def check_user_data(encoded: str) -> str:
    """``encoded`` if it is base64 of at most :data:`MAX_USER_DATA` characters."""
    if len(encoded) > MAX_USER_DATA:
        raise BadGuestData(
            f"user data is {len(encoded)} characters of base64, more than the "
            f"{MAX_USER_DATA} allowed (about {MAX_USER_DATA * 3 // 4 // 1024} KiB before encoding)"
        )
    try:
        base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadGuestData("user data must be base64-encoded") from None
    return encoded


def decode_user_data(encoded: str) -> bytes:
    """The user data's bytes, as the guest gets them."""
    return base64.b64decode(encoded)
