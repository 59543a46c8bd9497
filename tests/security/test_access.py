"""Access: what a principal does, and the driver-level grants derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

import rpclib
from rpclib import access_cli
from rpclib.access import Access, Consume, load_spec
from rpclib.transports.base import Address

COMPUTE = rpclib.Target(topic="compute", server="compute-1")


def test_serving_a_target_grants_its_server_queue_shared_queue_fanout_and_advert() -> None:
    grants = Access("compute-1").serve(COMPUTE).grants()
    assert grants.consume == {
        Consume(Address("rpclib", "compute", server="compute-1")),
        Consume(Address("rpclib", "compute")),
        Consume(Address("rpclib", "compute", fanout=True)),
    }
    assert grants.advertise == {Address("rpclib", "compute", server="compute-1")}
    assert not grants.send


def test_serving_one_server_grants_nothing_of_another_server() -> None:
    grants = Access("compute-1").serve(COMPUTE).grants()
    assert not grants.may_consume(Address("rpclib", "compute", server="compute-2"), None)
    assert not grants.may_advertise(Address("rpclib", "compute", server="compute-2"))


def test_calling_a_topic_grants_sending_to_it_and_reading_its_adverts_only() -> None:
    grants = Access("scheduler-1").call(rpclib.Target(topic="conductor")).grants()
    assert grants.may_send(Address("rpclib", "conductor", server="any"))
    assert grants.may_watch("rpclib", "conductor")
    assert not grants.may_send(Address("rpclib", "compute"))
    assert not grants.consume


def test_notifying_grants_each_priority_topic_of_the_notification_topic() -> None:
    grants = Access("conductor-1").notify("notifications", ["info", "error"]).grants()
    assert grants.send == {("rpclib", "notifications.info"), ("rpclib", "notifications.error")}


def test_listening_grants_the_pool_queue_of_each_priority() -> None:
    grants = Access("billing-1").listen("notifications", "billing", ["info"]).grants()
    assert grants.consume == {Consume(Address("rpclib", "notifications.info"), "billing")}


def test_a_target_exchange_overrides_the_default_exchange() -> None:
    target = rpclib.Target(exchange="nova", topic="conductor")
    assert Access("x").call(target).grants().send == {("nova", "conductor")}


@pytest.mark.parametrize("bad", ["", "compute.1", "a/b", "x" * 65, "ünï"])
def test_a_principal_that_a_name_prefix_could_cross_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="principal"):
        Access(bad)


def test_unknown_priorities_are_refused() -> None:
    with pytest.raises(ValueError, match="priorities"):
        Access("x").notify("notifications", ["loud"])


def test_serving_needs_a_server(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="server"):
        Access("x").serve(rpclib.Target(topic="compute"))


def test_a_spec_file_reads_into_the_same_access(tmp_path: Path) -> None:
    spec = tmp_path / "accounts.toml"
    spec.write_text(
        '[[principal]]\nname = "compute-1"\nserve = ["compute@compute-1"]\n'
        'call = ["conductor"]\n\n[[principal]]\nname = "billing-1"\n'
        'listen = ["notifications#billing"]\n'
    )
    compute, billing = load_spec(spec)
    assert compute == Access("compute-1").serve(COMPUTE).call(rpclib.Target(topic="conductor"))
    assert billing == Access("billing-1").listen("notifications", "billing")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[principal]]\nname = "a"\nserve = ["compute"]\n', "TOPIC@SERVER"),
        ('[[principal]]\nname = "a"\nlisten = ["notifications"]\n', "TOPIC#POOL"),
        ('[[principal]]\nname = "a"\nsend = ["x"]\n', "unknown key"),
        ('[[principal]]\nname = "a"\n[[principal]]\nname = "a"\n', "named twice"),
        ("x = 1\n", "no \\[\\[principal\\]\\]"),
        ("[[principal\n", "access spec"),
    ],
)
def test_a_bad_spec_names_its_mistake(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "accounts.toml"
    spec.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_spec(spec)


def test_provisioning_an_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: .*rabbit"):
        rpclib.access.provision("nats://host", [])


def test_the_access_command_prints_one_error_line_for_a_bad_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "accounts.toml"
    spec.write_text('[[principal]]\nname = "a.b"\n')
    assert access_cli.main(["print", "memory://bus", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rpclib-access: error: principal 'a.b'")


def test_the_access_command_applies_only_with_a_secrets_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        access_cli.main(["apply", "memory://bus", str(tmp_path / "spec.toml")])
    assert "--secrets" in capsys.readouterr().err


def test_a_secret_is_created_once_private_and_then_kept(tmp_path: Path) -> None:
    first = access_cli.password_for(tmp_path / "s", "compute-1", create=True)
    again = access_cli.password_for(tmp_path / "s", "compute-1", create=True)
    assert first == again and first is not None and len(first) >= 24
    assert (tmp_path / "s" / "compute-1").stat().st_mode & 0o777 == 0o600
    assert access_cli.password_for(tmp_path / "s", "compute-2", create=False) is None


def test_a_login_url_has_the_accounts_credentials_and_no_admin_only_options() -> None:
    account = rpclib.Account(Access("compute-1"), "p/w")
    admin = "rabbit://guest:guest@h1:5672,guest:guest@h2/v?management=http://h1:15672&heartbeat=5"
    assert rpclib.access.login_url(admin, account) == (
        "rabbit://compute-1:p%2Fw@h1:5672,compute-1:p%2Fw@h2/v?heartbeat=5"
    )
