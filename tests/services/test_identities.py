"""Each service instance has its own principal, account and policy (services.common.identities)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import rpclib
from rpclib.access import with_credentials
from rpclib.transports.base import Address
from services.allinone import HOSTS
from services.common import identities
from services.common.accounts import ProvisioningUnavailable, provision_cloud
from services.common.config import parse_boolean
from services.conductor.rpcapi import ConductorAPI
from services.conductor.service import ConductorService
from services.scheduler import service as scheduler_service


def test_each_service_instance_has_its_own_principal() -> None:
    names = [a.principal for a in HOSTS.accesses()]
    assert names == [
        "conductor-conductor1",
        "scheduler-scheduler1",
        "billing-billing1",
        "compute-compute1",
        "compute-compute2",
        "admin",
    ]


@pytest.mark.parametrize("host", ["node1.example.com", "a/b", "", "x" * 60])
def test_a_host_that_cannot_name_a_principal_is_refused(host: str) -> None:
    with pytest.raises(identities.BadHost, match=f"host {host!r} cannot name the compute"):
        identities.principal(identities.COMPUTE, host)


def test_a_service_process_with_such_a_host_stops_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert scheduler_service.main(["--host", "node1.example.com"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("rpclib-scheduler: error: --host: ")
    assert "cannot name the scheduler principal" in message
    assert message.count("\n") == 1


def test_the_conductor_reads_a_compute_host_from_its_principal() -> None:
    assert identities.compute_host("compute-node7") == "node7"
    assert identities.compute_host("scheduler-node7") is None
    assert identities.compute_host("compute-") is None
    assert identities.compute_host(None) is None


def test_a_compute_node_consumes_only_its_own_queues_and_sends_only_to_the_conductor() -> None:
    grants = identities.access(identities.COMPUTE, "node7").grants()
    consumed = {c.address for c in grants.consume}
    assert Address("rpclib", "compute", server="node7") in consumed
    assert not any(a.server not in (None, "node7") for a in consumed)
    assert {a.topic for a in consumed} == {"compute"}
    assert grants.send == frozenset({("rpclib", "conductor")})


def test_only_conductors_may_emit_billed_events() -> None:
    policy = identities.BILLING_LISTENER_POLICY
    assert policy.check_notification("conductor-c1", "instance.create.end").allowed
    assert not policy.check_notification("compute-c1", "instance.create.end").allowed


def test_login_urls_replace_every_hosts_credentials() -> None:
    url = "rabbit://guest:guest@h1:5672,guest:guest@h2:5672/vhost?ssl=1"
    assert with_credentials(url, "compute-a", "p/w") == (
        "rabbit://compute-a:p%2Fw@h1:5672,compute-a:p%2Fw@h2:5672/vhost?ssl=1"
    )


def test_a_bus_without_account_provisioning_is_a_one_line_error() -> None:
    with pytest.raises(ProvisioningUnavailable, match="--insecure") as refused:
        provision_cloud("nosuch://admin:pw@127.0.0.1/", HOSTS)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("off", False), ("0", False)])
def test_authorization_is_a_boolean_setting(text: str, value: bool) -> None:
    assert parse_boolean(text) is value


def test_an_unclear_authorization_setting_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected true or false"):
        parse_boolean("maybe")


def test_services_refuse_unauthenticated_senders_by_default(
    tmp_path: Path, transport: rpclib.Transport
) -> None:
    conductor = ConductorService(transport, host="c1", state_dir=tmp_path)
    conductor.start()
    try:
        with pytest.raises(rpclib.Forbidden, match="unauthenticated sender"):
            ConductorAPI(transport, timeout=10).list_instances({})
    finally:
        conductor.stop()


def test_authorization_off_is_logged_loudly(
    tmp_path: Path, transport: rpclib.Transport, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        conductor = ConductorService(transport, host="c1", state_dir=tmp_path, authorization=False)
        conductor.start()
        conductor.stop()
    assert any("AUTHORIZATION IS OFF for conductor" in r.getMessage() for r in caplog.records)
