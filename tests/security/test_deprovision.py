"""rpclib.access.deprovision: the accounts provision made, and their durable queues, go."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import amqp
import pytest

import rpclib
from rpclib.access import Access, Account, deprovision, login_url, provision
from rpclib.exceptions import TransportError
from rpclib.target import Target
from rpclib.transports.rabbit import naming
from tests.support.rabbit import BROKER, PASSWORD, USER, list_queues, rabbitmqctl

SERVER = Access("svc-a").serve(Target(topic="work", server="svc-a"))


def users() -> set[str]:
    out = rabbitmqctl("list_users", "-q", "--no-table-headers")
    return {line.split("\t")[0] for line in out.splitlines()}


def declare_as(url: str, *queues: str) -> None:
    """Declare durable ``queues`` logged in as ``url``'s user, as its driver would."""
    parts = urlsplit(url)
    conn = amqp.Connection(
        f"{parts.hostname}:{parts.port}",
        userid=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        virtual_host=unquote(parts.path[1:]) or "/",
    )
    conn.connect()
    try:
        channel = conn.channel()
        for queue in queues:
            channel.queue_declare(queue, durable=True, auto_delete=False)
    finally:
        conn.close()


@pytest.fixture
def other_vhost() -> Iterator[str]:
    vhost = f"rpclib-test-other-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


def test_a_removed_memory_account_can_no_longer_log_in() -> None:
    account = Account(SERVER, "secret")
    provision("memory://deprovision", [account])
    removed = deprovision("memory://deprovision", [SERVER])
    assert removed.accounts == ("svc-a",)
    with pytest.raises(TransportError, match="unknown user"):
        rpclib.get_transport(login_url("memory://deprovision", account))


def test_removing_a_memory_account_already_gone_removes_nothing() -> None:
    provision("memory://deprovision-twice", [Account(SERVER, "secret")])
    deprovision("memory://deprovision-twice", [SERVER])
    assert deprovision("memory://deprovision-twice", [SERVER]).accounts == ()


def test_a_transport_that_cannot_remove_accounts_says_so_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^amqp1:// cannot remove accounts yet: [^\n]+$"):
        deprovision("amqp1://guest:guest@127.0.0.1/", [SERVER])


def test_rabbit_removes_the_users_and_the_durable_queues_they_consumed(
    fresh_rabbit_url: str,
) -> None:
    account = Account(SERVER.call(Target(topic="other")), "secret")
    provision(fresh_rabbit_url, [account])
    server_queue = "rpclib.work@svc-a"
    declare_as(login_url(fresh_rabbit_url, account), "rpclib.work", server_queue)
    vhost = fresh_rabbit_url.rsplit("/", 1)[1]
    assert {"rpclib.work", server_queue} <= set(list_queues(vhost))

    removed = deprovision(fresh_rabbit_url, [account.access])

    assert removed.accounts == ("svc-a",)
    assert set(removed.queues) == {"rpclib.work", server_queue}
    assert "svc-a" not in users()
    assert set(list_queues(vhost)) == {naming.DEAD_LETTER_QUEUE}  # shared: kept


def test_rabbit_leaves_the_same_queues_of_another_vhost_alone(
    fresh_rabbit_url: str, other_vhost: str
) -> None:
    other = f"rabbit://{USER}:{PASSWORD}@{BROKER}/{other_vhost}"
    declare_as(other, "rpclib.work", "rpclib.work@svc-a")
    provision(fresh_rabbit_url, [Account(SERVER, "secret")])

    deprovision(fresh_rabbit_url, [SERVER])

    assert {"rpclib.work", "rpclib.work@svc-a"} <= set(list_queues(other_vhost))


def test_a_rabbit_user_still_used_on_another_vhost_only_loses_this_one(
    fresh_rabbit_url: str, other_vhost: str
) -> None:
    other = f"rabbit://{USER}:{PASSWORD}@{BROKER}/{other_vhost}"
    provision(other, [Account(SERVER, "secret")])
    provision(fresh_rabbit_url, [Account(SERVER, "secret")])
    vhost = fresh_rabbit_url.rsplit("/", 1)[1]
    try:
        removed = deprovision(fresh_rabbit_url, [SERVER])
        assert removed.accounts == ()
        held = rabbitmqctl("list_user_permissions", "-q", "--no-table-headers", "svc-a")
        assert {line.split("\t")[0] for line in held.splitlines()} == {other_vhost}
        assert vhost not in held
    finally:
        deprovision(other, [SERVER])
    assert "svc-a" not in users()
