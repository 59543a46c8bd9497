"""The version rule and version parsing."""

from __future__ import annotations

import pytest

from rpclib.versioning import Version, highest_compatible, is_compatible, parse_version


def test_parses_major_minor() -> None:
    assert parse_version("1.2") == Version(1, 2)


def test_orders_numerically_not_lexically() -> None:
    assert parse_version("1.10") > parse_version("1.9")


@pytest.mark.parametrize("bad", ["1", "1.2.3", "a.b", "", "1.", ".2", "-1.2", 1.2, None])
def test_rejects_malformed_versions_naming_them(bad: object) -> None:
    with pytest.raises(ValueError, match="version"):
        parse_version(bad)  # type: ignore[arg-type]


def test_same_major_lower_or_equal_minor_is_compatible() -> None:
    assert is_compatible("1.2", "1.3")
    assert is_compatible("1.3", "1.3")


def test_higher_minor_is_not_compatible() -> None:
    assert not is_compatible("1.4", "1.3")


def test_different_major_never_matches() -> None:
    assert not is_compatible("1.0", "2.5")
    assert not is_compatible("2.0", "1.9")


def test_highest_compatible_picks_the_best_implementation() -> None:
    assert highest_compatible("1.1", ["1.0", "1.4", "2.0", "1.2"]) == Version(1, 4)
    assert highest_compatible("1.5", ["1.4", "2.0"]) is None
