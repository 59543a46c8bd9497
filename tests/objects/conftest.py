"""Fixtures: two releases of the same object classes (see support.py)."""

from __future__ import annotations

import pytest

from tests.objects.support import Release, make_release


@pytest.fixture
def old() -> Release:
    return make_release(new=False)


@pytest.fixture
def new() -> Release:
    return make_release(new=True)
