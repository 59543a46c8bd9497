"""``rpclib`` against RabbitMQ, run as its own process: inspect, dead letters, what it cannot tell.

Each test has a vhost of its own on the shared broker (dead letters are per vhost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rpclib
from rpclib.transports.base import Address, Guarantee
from tests.ops.scenario import TOPIC, NotesV10, NotesV12, cast_too_new, serve, stop
from tests.rpc.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def rpclib_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``rpclib ARGV`` as a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rpclib.ops_cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_inspect_shows_two_versions_and_the_auto_cap(fresh_rabbit_url):
    with rpclib.get_transport(fresh_rabbit_url) as transport:
        old = serve(transport, "old-node", NotesV10())
        new = serve(transport, "new-node", NotesV12())
        try:
            done = rpclib_cli("inspect", fresh_rabbit_url, TOPIC, "--json")
        finally:
            stop(old)
            stop(new)
    assert done.returncode == 0, done.stderr
    [topic] = json.loads(done.stdout)["topics"]
    assert {s["server"]: s["interfaces"] for s in topic["servers"]} == {
        "new-node": {"notes": ["1.2"]},
        "old-node": {"notes": ["1.0"]},
    }
    assert all(s["pid"] == os.getpid() and s["started_at"] for s in topic["servers"])
    assert [(c["namespace"], c["cap"]) for c in topic["caps"]] == [("notes", "1.0")]
    depths = {q["queue"]: q["consumers"] for q in topic["queues"]}
    assert depths["rpclib.notes"] == 2 and depths["rpclib.notes@old-node"] == 1


def test_inspect_without_topic_hears_every_topic_with_servers(fresh_rabbit_url):
    with rpclib.get_transport(fresh_rabbit_url) as transport:
        a = serve(transport, "n1", NotesV10())
        b = rpclib.RPCServer(
            transport, rpclib.Target(topic="other", server="n2"), [NotesV12()], advert_interval=0.5
        )
        b.start()
        try:
            done = rpclib_cli("inspect", fresh_rabbit_url, "--listen", "3", "--json")
        finally:
            stop(a)
            stop(b)
    assert done.returncode == 0, done.stderr
    assert [t["topic"] for t in json.loads(done.stdout)["topics"]] == ["notes", "other"]


def test_inspect_reports_messages_waiting_in_a_queue(fresh_rabbit_url):
    with rpclib.get_transport(fresh_rabbit_url) as transport:
        transport.driver.declare(Address("rpclib", TOPIC))
        transport.driver.send(Address("rpclib", TOPIC), b"x", guarantee=Guarantee.AT_LEAST_ONCE)
        done = rpclib_cli("inspect", fresh_rabbit_url, TOPIC, "--json")
    assert done.returncode == 0, done.stderr
    [topic] = json.loads(done.stdout)["topics"]
    assert {"queue": "rpclib.notes", "messages": 1, "consumers": 0, "unsettled": None} in topic[
        "queues"
    ]


def dead_lettered(transport: rpclib.Transport, *texts: str) -> list[str]:
    old = serve(transport, "old-node", NotesV10())
    try:
        for text in texts:
            cast_too_new(transport, text)
        wait_until(lambda: len(transport.driver.dead_letters()) == len(texts), what="dead letters")
    finally:
        stop(old)
    return [letter.key for letter in transport.driver.dead_letters()]


def test_dead_letters_list_and_show(fresh_rabbit_url):
    with rpclib.get_transport(fresh_rabbit_url) as transport:
        [key] = dead_lettered(transport, "hello")
    listed = rpclib_cli("dead-letters", fresh_rabbit_url, "list", "--json")
    shown = rpclib_cli("dead-letters", fresh_rabbit_url, "show", key)
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert (letter["key"], letter["address"], letter["attempts"]) == (key, "rpclib.notes", 1)
    assert shown.returncode == 0, shown.stderr
    assert "reason:    UnsupportedVersion" in shown.stdout
    assert 'method: "note"' in shown.stdout and 'version: "1.2"' in shown.stdout


def test_dead_letter_replay_is_handled_by_an_upgraded_server(fresh_rabbit_url):
    with rpclib.get_transport(fresh_rabbit_url) as transport:
        [key] = dead_lettered(transport, "hello")
        endpoint = NotesV12()
        new = serve(transport, "new-node", endpoint)
        try:
            done = rpclib_cli("dead-letters", fresh_rabbit_url, "replay", key)
            assert done.returncode == 0, done.stderr
            assert endpoint.event.wait(30)
        finally:
            stop(new)
        assert endpoint.noted == ["hello"]
        assert transport.driver.dead_letters() == []
    assert done.stdout == f"replayed {key} to rpclib.notes (attempt 2)\n"


def test_dead_letter_purge_by_key_then_all(fresh_rabbit_url):
    with rpclib.get_transport(fresh_rabbit_url) as transport:
        first, second, third = dead_lettered(transport, "one", "two", "three")
        one = rpclib_cli("dead-letters", fresh_rabbit_url, "purge", second)
        assert [letter.key for letter in transport.driver.dead_letters()] == [first, third]
        every = rpclib_cli("dead-letters", fresh_rabbit_url, "purge", "--all")
        assert transport.driver.dead_letters() == []
    assert (one.returncode, one.stdout) == (0, "purged 1 dead letter\n")
    assert (every.returncode, every.stdout) == (0, "purged 2 dead letters\n")


def test_an_unreachable_broker_is_one_error_line():
    done = rpclib_cli("inspect", "rabbit://guest:guest@127.0.0.1:1/?connect_timeout=1", TOPIC)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("rpclib: error: ")
