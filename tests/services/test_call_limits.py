"""Every reference service's RPC client bounds a call's total time, not only its silence.

Progress heartbeats restart a call's inactivity timeout; without ``max_time``
a stuck handler that still beats would hold the calling service forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import rpclib
from services.billing.service import BillingAPI
from services.conductor.rpcapi import ConductorAPI
from services.scheduler.rpcapi import SchedulerAPI


@pytest.mark.parametrize("api", [ConductorAPI, SchedulerAPI, BillingAPI])
def test_service_clients_set_a_total_limit_above_their_timeout(
    transport: rpclib.Transport, api: Callable[..., Any]
) -> None:
    client: rpclib.RPCClient = api(transport).client
    assert client.max_time is not None
    assert client.max_time > client.timeout  # long calls still finish while they beat
