"""What a transport cannot tell is one clear line (etcd:// reports no queue depths, replays
nothing); what it can, it does (lists topics, purges dead letters)."""

from __future__ import annotations

import rpclib
from tests.ops.scenario import TOPIC, NotesV10, cast_too_new, run, serve, stop
from tests.rpc.helpers import wait_until


def test_inspect_without_topic_on_etcd_lists_the_advertised_topics(etcd_url):
    with rpclib.get_transport(etcd_url) as transport:
        server = serve(transport, "n1", NotesV10())
        try:
            code, out = run("inspect", etcd_url)
        finally:
            stop(server)
    assert code == 0
    assert out.startswith(f"topic rpclib/{TOPIC}\n")


def test_inspect_of_a_topic_on_etcd_says_it_cannot_tell_queue_depths(etcd_url):
    with rpclib.get_transport(etcd_url) as transport:
        server = serve(transport, "n1", NotesV10())
        try:
            code, out = run("inspect", etcd_url, TOPIC)
        finally:
            stop(server)
    assert code == 0
    assert "notes=1.0" in out
    assert "  queues: etcd:// (EtcdDriver) cannot tell queue depths\n" in out


def etcd_dead_letter(transport: rpclib.Transport) -> str:
    """A cast at 1.2 that a 1.0 server refused (stored: it came at-least-once); its key."""
    old = serve(transport, "old-node", NotesV10())
    try:
        cast_too_new(transport, "hello")
        wait_until(lambda: len(transport.driver.dead_letters()) == 1, what="the dead letter")
    finally:
        stop(old)
    [letter] = transport.driver.dead_letters()
    return letter.key


def test_replaying_a_dead_letter_on_etcd_is_one_error_line(etcd_url, capsys):
    with rpclib.get_transport(etcd_url) as transport:
        key = etcd_dead_letter(transport)
        code, _ = run("dead-letters", etcd_url, "replay", key)
        assert code == 1
        assert capsys.readouterr().err == (
            "rpclib: error: etcd:// (EtcdDriver) cannot replay dead letters "
            "(rpclib dead-letters replay)\n"
        )
        assert [letter.key for letter in transport.driver.dead_letters()] == [key]


def test_purging_a_dead_letter_on_etcd_removes_it(etcd_url):
    with rpclib.get_transport(etcd_url) as transport:
        key = etcd_dead_letter(transport)
        assert run("dead-letters", etcd_url, "purge", key) == (0, "purged 1 dead letter\n")
        assert transport.driver.dead_letters() == []


def test_inspect_without_topic_on_amqp1_asks_for_one(fresh_amqp1_url, capsys):
    code, out = run("inspect", fresh_amqp1_url)
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        "rpclib: error: amqp1:// (Amqp1Driver) cannot tell which topics of 'rpclib' have "
        "servers; name a topic: rpclib inspect URL TOPIC\n"
    )
