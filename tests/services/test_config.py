"""Service configuration: command line > environment > config file > defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.common import config as cfg

NAMES = ("transport_url", "host", "log_level", "db_url", "audit_interval")


def load(argv: list[str], env: dict[str, str] | None = None) -> cfg.ServiceConfig:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, NAMES)
    return cfg.load("conductor", parser.parse_args(argv), NAMES, environ=env or {})


def test_defaults_are_the_embedded_ones() -> None:
    config = load([])
    assert (config.transport_url, config.libvirt_uri, config.db_url) == (
        "memory://",
        "test:///default",
        None,
    )


def test_file_then_environment_then_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "rpclib.toml"
    path.write_text(
        'transport_url = "rabbit://file/"\nhost = "file-host"\n'
        '[conductor]\ndb_url = "sqlite:///file.db"\naudit_interval = 60\n'
    )
    env = {"RPCLIB_HOST": "env-host", "RPCLIB_CONFIG": str(path)}
    config = load(["--transport-url", "rabbit://flag/"], env)
    assert config.transport_url == "rabbit://flag/"
    assert config.host == "env-host"
    assert (config.db_url, config.audit_interval) == ("sqlite:///file.db", 60.0)


def test_unknown_setting_in_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('transport_ulr = "x"\n')
    with pytest.raises(cfg.ConfigError, match="unknown setting 'transport_ulr'"):
        load(["--config", str(path)])


def test_bad_value_names_where_it_came_from() -> None:
    with pytest.raises(cfg.ConfigError, match="RPCLIB_AUDIT_INTERVAL.*must be a float"):
        load([], {"RPCLIB_AUDIT_INTERVAL": "hourly"})


def test_bad_log_level_is_refused() -> None:
    with pytest.raises(cfg.ConfigError, match="log-level"):
        load(["--log-level", "loud"])
