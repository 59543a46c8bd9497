"""Service configuration: command line > environment > config file > defaults.

Every service takes ``--transport-url``, ``--host``, ``--log-level`` and
``--config FILE``; the conductor also ``--db-url``, compute ``--libvirt-uri``.
Environment variables are ``RPCLIB_<NAME>`` (``RPCLIB_TRANSPORT_URL``...). A
config file is TOML: top-level keys for every service, a table per service
(``[conductor]``, ``[compute]``...) overriding them::

    transport_url = "rabbit://guest:guest@127.0.0.1:5672/"
    [conductor]
    db_url = "postgresql+psycopg://postgres@127.0.0.1/nova"

``authorization`` (default true) makes each service check who sent each
request (services.common.identities); ``false`` is only for a bus that cannot
authenticate senders, and every service logs that it is off.

A service's signing key and trust store are options of its transport URL
(``etcd://compute-h1:PW@host/cloud?signing_key=PATH&signing_trust=DIR``, any
scheme; rpclib.signing.signing_from_url), so they come from wherever the URL
does; ``rpclib-cloud accounts`` writes such URLs on etcd://.

``upgrade_levels`` pins the interface versions a service's clients send
(services.common.upgrade_levels): a ``[upgrade_levels]`` table (top level, or
``[scheduler.upgrade_levels]`` for one service), ``RPCLIB_UPGRADE_LEVELS=
"compute=1.0"``, ``--upgrade-level compute=1.0`` (repeatable). Unlike the other
settings they merge per service: a higher source overrides the pins it names.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rpclib.console import UsageError
from services.common import upgrade_levels

DEFAULT_TRANSPORT_URL = "memory://"
DEFAULT_LIBVIRT_URI = "test:///default"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STRATEGIES = ("spread", "pack")
# Settings with a fixed set of values (checked on the command line, in the environment and files).
CHOICES: dict[str, tuple[str, ...]] = {"strategy": STRATEGIES}


class ConfigError(UsageError):
    """A setting is malformed or unknown; the message names it and where it came from."""


def default_state_dir() -> Path:
    """Where services keep files: $RPCLIB_STATE_DIR, else $XDG_STATE_HOME/rpclib."""
    explicit = os.environ.get("RPCLIB_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "rpclib"


@dataclass
class ServiceConfig:
    """The settings of one service process."""

    service: str
    transport_url: str = DEFAULT_TRANSPORT_URL
    host: str = field(default_factory=socket.gethostname)
    log_level: str = "INFO"
    state_dir: Path = field(default_factory=default_state_dir)
    db_url: str | None = None
    libvirt_uri: str = DEFAULT_LIBVIRT_URI
    strategy: str = "spread"
    audit_interval: float = 3600.0
    heartbeat_interval: float = 10.0
    image_dirs: str | None = None
    authorization: bool = True
    upgrade_levels: dict[str, str] = field(default_factory=dict)
    metadata_address: str = "169.254.169.254"
    metadata_port: int = 80

    def image_dir_list(self) -> list[Path] | None:
        """``image_dirs`` split on the path separator (None: no local image paths allowed)."""
        if self.image_dirs is None:
            return None
        return [Path(p) for p in self.image_dirs.split(os.pathsep) if p]

    def setup_logging(self) -> None:
        """Log at ``log_level``; third-party libraries stay at WARNING unless asked.

        ``--log-level DEBUG`` is for rpclib's and the services' own lines (one
        per call, cast and handled message), not the broker client's frame
        chatter: the libraries in ``QUIET_LIBRARIES`` log at WARNING (or
        ``log_level`` if higher). Ask for one with ``RPCLIB_LOG_LEVELS``,
        e.g. ``RPCLIB_LOG_LEVELS="amqp=DEBUG,sqlalchemy.engine=INFO"``.
        """
        logging.basicConfig(
            level=self.log_level,
            format=f"%(asctime)s {self.service}[{self.host}] %(levelname)s %(name)s: %(message)s",
        )
        quiet = max(logging.WARNING, logging.getLevelName(self.log_level))
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(quiet)
        try:
            asked = logger_levels(os.environ.get("RPCLIB_LOG_LEVELS", ""))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None  # it names RPCLIB_LOG_LEVELS
        for name, level in asked.items():
            logging.getLogger(name).setLevel(level)


QUIET_LIBRARIES = (
    "alembic",
    "amqp",
    "etcd3gw",
    "libvirt",
    "proton",
    "requests",
    "sqlalchemy",
    "urllib3",
)
"""Loggers kept at WARNING by :meth:`ServiceConfig.setup_logging` unless asked for."""


def logger_levels(spec: str) -> dict[str, str]:
    """``"amqp=DEBUG,urllib3=INFO"`` as {logger: level}; ValueError naming a bad entry."""
    levels: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, level = entry.partition("=")
        level = level.strip().upper()
        if not sep or not name.strip() or level not in LOG_LEVELS:
            raise ValueError(
                f"RPCLIB_LOG_LEVELS entry {entry!r} is not LOGGER=LEVEL "
                f"(LEVEL one of {', '.join(LOG_LEVELS)})"
            )
        levels[name.strip()] = level
    return levels


_OPTIONS: dict[str, tuple[str, Any]] = {
    "transport_url": (
        "transport URL (memory://, rabbit://...; ?signing_key=PATH&signing_trust=DIR to sign)",
        str,
    ),
    "host": ("this node's name", str),
    "log_level": (f"one of {', '.join(LOG_LEVELS)}", str),
    "state_dir": ("directory for databases, images and disks", Path),
    "db_url": ("conductor database URL (SQLite file in the state dir by default)", str),
    "libvirt_uri": ("libvirt connection URI (test:///default, qemu:///system)", str),
    "strategy": ("scheduler placement: spread or pack", str),
    "audit_interval": ("seconds between instance.exists audits", float),
    "heartbeat_interval": ("seconds between service heartbeats", float),
    "image_dirs": (
        f"directories local image paths must be under, '{os.pathsep}'-separated "
        "(default: none, so only http(s) URLs are accepted)",
        str,
    ),
    "metadata_address": (
        "compute: the address its metadata service listens on (169.254.169.254, as "
        "Nova's; 'off': none)",
        str,
    ),
    "metadata_port": ("compute: the metadata service's port (80)", int),
    "authorization": (
        "check who sends each request (true, the default); false only for a bus that "
        "cannot authenticate senders (logged loudly)",
        bool,
    ),
    "upgrade_levels": (
        "hold the interface version sent to SERVICE (conductor, scheduler, compute, "
        "billing) at VERSION instead of auto, during an upgrade; repeatable",
        upgrade_levels.parse,
    ),
}


def add_arguments(
    parser: argparse.ArgumentParser, names: Sequence[str], *, default: Any = None
) -> None:
    """The standard options ``names`` plus ``--config``.

    ``default=argparse.SUPPRESS`` on a subcommand's parser accepts them after
    the subcommand too, without overwriting those given before it.
    """
    parser.add_argument("--config", type=Path, default=default, help="TOML config file")
    for name in names:
        help_text, kind = _OPTIONS[name]
        flag = f"--{name.replace('_', '-')}"
        if name == "upgrade_levels":
            parser.add_argument(
                "--upgrade-level",
                dest=name,
                action="append",
                type=upgrade_levels.parse,
                metavar="SERVICE=VERSION",
                default=default,
                help=help_text,
            )
        elif kind is bool:
            parser.add_argument(
                flag, type=parse_boolean, metavar="true|false", default=default, help=help_text
            )
        elif name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[name], default=default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=help_text)


def load(
    service: str,
    args: argparse.Namespace,
    names: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Merge defaults, the config file, the environment and ``args`` (in that order)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or env.get("RPCLIB_CONFIG")
    if config_path:
        values.update(_from_file(Path(config_path), service, names))
    for name in names:
        text = env.get(f"RPCLIB_{name.upper()}")
        if text is not None:
            _set(values, name, _convert(name, text, f"environment variable RPCLIB_{name.upper()}"))
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            _set(values, name, value)
    config = ServiceConfig(service=service, **values)
    config.log_level = str(config.log_level).upper()
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"--log-level: must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}"
        )
    return config


def _from_file(path: Path, service: str, names: Sequence[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: config file {path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(ServiceConfig)} - {"service"}
    section = data.get(service, {})
    merged = {k: v for k, v in data.items() if not isinstance(v, dict)} | section
    top, own = data.get("upgrade_levels"), section.get("upgrade_levels", {})
    if isinstance(top, dict):  # [upgrade_levels] for every service, [SERVICE.upgrade_levels]
        merged["upgrade_levels"] = top | own if isinstance(own, dict) else own
    out: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in known:
            raise ConfigError(f"--config: config file {path}: unknown setting {key!r}")
        if key in names:
            out[key] = _convert(key, value, f"config file {path}")
    return out


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_boolean(value: Any) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0); anything else is a ValueError."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _set(values: dict[str, Any], name: str, value: Any) -> None:
    """``values[name] = value``; upgrade pins merge per service (the higher source wins)."""
    if name == "upgrade_levels":
        pins = value if isinstance(value, dict) else {}
        for part in value if isinstance(value, list) else ():  # --upgrade-level, repeated
            pins |= part
        value = values.get(name, {}) | pins
    values[name] = value


def _convert(name: str, value: Any, where: str) -> Any:
    kind = _OPTIONS[name][1]
    if name == "upgrade_levels":
        try:
            return upgrade_levels.parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: upgrade_levels: {exc}") from None
    if kind is bool:
        try:
            return parse_boolean(value)
        except ValueError:
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}") from None
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be a {kind.__name__}, got {value!r}") from None
    if name in CHOICES and converted not in CHOICES[name]:
        raise ConfigError(
            f"{where}: {name} must be one of {', '.join(CHOICES[name])}, got {value!r}"
        )
    return converted
