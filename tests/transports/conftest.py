"""Transport tests: the contract suite's asserts get pytest's rewriting too."""

import pytest

pytest.register_assert_rewrite(
    "tests.transports.driver_contract", "tests.transports.envelope_contract"
)
