"""``rpclib-access``: print or apply least-privilege broker accounts from a spec file.

::

    rpclib-access print ADMIN_URL SPEC [--secrets DIR]
    rpclib-access apply ADMIN_URL SPEC --secrets DIR

``SPEC`` is a TOML file of ``[[principal]]`` tables (:func:`rpclib.access.load_spec`).
``--secrets DIR`` holds one file per principal with its password; ``apply``
creates a random password for each principal that has none yet (mode 0600)
and keeps existing ones, so running it again changes nothing. ``print`` shows
the commands an operator could run instead, with passwords from ``DIR`` or
placeholders.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from rpclib import console
from rpclib.access import Access, Account, load_spec, provision, render
from rpclib.exceptions import MessagingError


def password_for(secrets_dir: Path, principal: str, *, create: bool) -> str | None:
    """The password in ``secrets_dir/principal``; a new random one if ``create`` and none yet."""
    path = secrets_dir / principal
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        return text
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return text


def accounts_for(
    accesses: Sequence[Access], secrets_dir: Path | None, *, create: bool
) -> list[Account]:
    """Pair each access with its password (placeholders when there is no secret)."""
    out = []
    for access in accesses:
        found = None
        if secrets_dir is not None:
            found = password_for(secrets_dir, access.principal, create=create)
        out.append(Account(access, found or f"<password of {access.principal}>"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rpclib-access",
        description="Print or apply least-privilege broker accounts derived from a spec file.",
    )
    parser.add_argument("action", choices=("print", "apply"))
    parser.add_argument("admin_url", help="a transport URL with administrator credentials")
    parser.add_argument("spec", type=Path, help="TOML file of [[principal]] tables")
    parser.add_argument("--secrets", type=Path, help="directory of one password file per principal")
    console.add_standard_options(parser)
    args = parser.parse_args(argv)
    if args.action == "apply" and args.secrets is None:
        parser.error("apply needs --secrets DIR (where each principal's password is kept)")
    return console.run("rpclib-access", lambda: _act(args), debug=args.debug)


def _act(args: argparse.Namespace) -> int:
    """Print or apply; a bad spec or secret exits 2, a broker that fails 1."""
    try:  # the spec's and the secrets' messages name their files
        accesses = load_spec(args.spec)
        accounts = accounts_for(accesses, args.secrets, create=args.action == "apply")
    except (ValueError, OSError) as exc:
        raise console.UsageError(console.describe(exc)) from exc
    with console.setting("ADMIN_URL", (MessagingError, ImportError)):
        if args.action == "print":
            print(render(args.admin_url, accounts))
        else:
            provision(args.admin_url, accounts)
            print(f"{len(accounts)} account(s) provisioned; passwords in {args.secrets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
