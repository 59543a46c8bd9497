"""What a transport cannot tell is one clear line (etcd:// lists no topics, purges nothing)."""

from __future__ import annotations

import rpclib
from tests.ops.scenario import TOPIC, NotesV10, run, serve, stop


def test_inspect_without_topic_on_etcd_asks_for_one(etcd_url, capsys):
    code, out = run("inspect", etcd_url)
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        "rpclib: error: etcd:// (EtcdDriver) cannot tell which topics of 'rpclib' have "
        "servers; name a topic: rpclib inspect URL TOPIC\n"
    )


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


def test_purging_dead_letters_on_etcd_is_one_error_line(etcd_url, capsys):
    code, _ = run("dead-letters", etcd_url, "purge", "--all")
    assert code == 1
    assert capsys.readouterr().err == (
        "rpclib: error: etcd:// (EtcdDriver) cannot purge dead letters "
        "(rpclib dead-letters purge)\n"
    )
