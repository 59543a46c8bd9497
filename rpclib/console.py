"""What rpclib's console scripts share: ``--version``, ``--debug`` and one-line errors.

A setup mistake (a bad URL, a wrong password, an unreachable database) ends a
command with one line, ``PROG: error: SETTING: what is wrong``, and a non-zero
exit status: 2 when the command line or configuration is malformed (found
before anything was contacted), 1 when something failed at run time. The
traceback is shown only with ``--debug``.

Usage::

    parser = argparse.ArgumentParser(prog="rpclib-x")
    console.add_standard_options(parser)
    args = parser.parse_args(argv)
    return console.run("rpclib-x", lambda: body(args), debug=args.debug)

with ``body`` raising :class:`UsageError`, or wrapping the code that uses a
setting in ``with console.setting("--db-url"):`` so that its failure names it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rpclib.exceptions import InvalidTransportURL, UnknownTransport

USAGE = 2
RUNTIME = 1

# Exceptions that mean a value itself is malformed (found without contacting anything).
_USAGE_TYPES: tuple[type[Exception], ...] = (InvalidTransportURL, UnknownTransport, ValueError)


class CommandError(Exception):
    """A command failed in a way its one-line message explains; ``status`` is the exit code."""

    status = RUNTIME


class UsageError(CommandError):
    """The command line or configuration is malformed (exit status 2)."""

    status = USAGE


class SettingError(CommandError):
    """Using a setting failed; the message names the setting (``--db-url: ...``)."""

    def __init__(self, setting: str, reason: str, status: int = RUNTIME) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.status = status


def version() -> str:
    """rpclib's version (the installed distribution's, else the package's own)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("rpclib")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from rpclib import __version__

        return __version__


def add_standard_options(
    parser: argparse.ArgumentParser, *, default: object = False, version_flag: bool = True
) -> None:
    """``--debug`` (tracebacks) and ``--version`` on ``parser``.

    Pass ``default=argparse.SUPPRESS`` (and ``version_flag=False``) on a
    subcommand's parser so that ``--debug`` given before the subcommand is kept.
    """
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks of errors"
    )
    if version_flag:
        parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def describe(exc: BaseException) -> str:
    """One line for ``exc``: its message (no class name), whitespace folded."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def setting(name: str, runtime: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
    """Re-raise failures of the code inside as :class:`SettingError` naming ``name``.

    Malformed values (a bad transport URL, ``ValueError``) exit 2; the other
    exceptions of ``runtime`` exit 1; anything else passes through unchanged.
    """
    try:
        yield
    except CommandError:
        raise
    except _USAGE_TYPES as exc:
        raise SettingError(name, describe(exc), USAGE) from exc
    except runtime as exc:
        raise SettingError(name, describe(exc)) from exc


def attribute(exc: BaseException, settings: Mapping[type[BaseException], str]) -> BaseException:
    """``exc`` as a :class:`SettingError` if its type belongs to one of ``settings``."""
    for kind, name in settings.items():
        if isinstance(exc, kind) and not isinstance(exc, CommandError):
            status = USAGE if isinstance(exc, _USAGE_TYPES) else RUNTIME
            return SettingError(name, describe(exc), status)
    return exc


def run(
    prog: str,
    body: Callable[[], int],
    *,
    debug: bool = False,
    settings: Mapping[type[BaseException], str] | None = None,
) -> int:
    """Run a command's body; an error becomes one ``PROG: error: ...`` line and its status.

    ``settings`` names the setting behind an exception type (``{VirtError:
    "--libvirt-uri"}``) for failures raised far from where the setting is read.
    """
    try:
        return body()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        named = attribute(exc, settings or {})
        print(f"{prog}: error: {describe(named)}", file=sys.stderr)
        return named.status if isinstance(named, CommandError) else RUNTIME
