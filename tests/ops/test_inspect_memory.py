"""``rpclib inspect`` on memory://: live servers, their versions, the cap ``auto`` picks."""

from __future__ import annotations

import json

import pytest

import rpclib
from rpclib import envelope
from rpclib.directory import decode_advert, encode_advert
from rpclib.envelope import Kind
from rpclib.serializer import Serializer
from rpclib.transports.base import Address, Guarantee
from tests.ops.scenario import TOPIC, NotesV10, NotesV12, run, serve, stop


@pytest.fixture
def two_versions(transport: rpclib.Transport):
    old = serve(transport, "old-node", NotesV10())
    new = serve(transport, "new-node", NotesV12())
    yield
    stop(old)
    stop(new)


def test_inspect_shows_both_servers_and_the_cap_auto_would_pick(bus_url, two_versions):
    code, out = run("inspect", bus_url, TOPIC)
    assert code == 0
    lines = out.splitlines()
    old = next(line for line in lines if line.strip().startswith("old-node"))
    new = next(line for line in lines if line.strip().startswith("new-node"))
    assert "notes=1.0" in old and "notes=1.2" in new
    cap = next(line for line in lines if line.strip().startswith("notes "))
    assert cap.split()[:3] == ["notes", "1", "1.0"]


def test_inspect_json_names_host_pid_start_and_cap(bus_url, two_versions):
    code, out = run("inspect", bus_url, TOPIC, "--json")
    assert code == 0
    [topic] = json.loads(out)["topics"]
    servers = {s["server"]: s for s in topic["servers"]}
    assert servers["new-node"]["interfaces"] == {"notes": ["1.2"]}
    assert servers["old-node"]["pid"] > 0 and servers["old-node"]["host"]
    assert servers["old-node"]["started_at"] is not None
    assert [(c["namespace"], c["major"], c["cap"]) for c in topic["caps"]] == [("notes", 1, "1.0")]


def test_inspect_reports_queue_depths(bus_url, transport):
    transport.driver.declare(Address("rpclib", TOPIC))
    transport.driver.send(Address("rpclib", TOPIC), b"waiting", guarantee=Guarantee.AT_LEAST_ONCE)
    code, out = run("inspect", bus_url, TOPIC, "--json")
    assert code == 0
    [topic] = json.loads(out)["topics"]
    assert {"queue": "rpclib/notes", "messages": 1, "consumers": 0, "unsettled": 0} in topic[
        "queues"
    ]


def test_inspect_without_topic_lists_every_topic_with_servers(bus_url, transport):
    a = serve(transport, "n1", NotesV10())
    b = rpclib.RPCServer(transport, rpclib.Target(topic="other", server="n2"), [NotesV12()])
    b.start()
    try:
        code, out = run("inspect", bus_url, "--json")
    finally:
        stop(a)
        stop(b)
    assert code == 0
    assert [t["topic"] for t in json.loads(out)["topics"]] == ["notes", "other"]


def old_advert(server: str) -> bytes:
    """An advert as servers before host, pid and start time wrote it."""
    header = {"srv": server, "if": [["notes", ["1.1"]]], "obj": {}, "ttl": 30.0}
    return envelope.encode(Serializer(), Kind.ADVERT, envelope.new_message_id(), header)


def test_an_old_advert_still_decodes_without_host_pid_or_start():
    advert = decode_advert("veteran", old_advert("veteran"))
    assert (advert.host, advert.pid, advert.started_at) == ("", 0, None)


def test_a_new_advert_carries_when_the_server_started():
    body = encode_advert("n1", {"notes": ["1.0"]}, {}, 30.0, started_at=1_700_000_000.5)
    assert decode_advert("n1", body).started_at == 1_700_000_000.5


def test_inspect_shows_what_an_old_advert_does_not_say_as_question_marks(bus_url, transport):
    transport.driver.advertise(
        Address("rpclib", TOPIC, server="veteran"), old_advert("veteran"), 30.0
    )
    code, out = run("inspect", bus_url, TOPIC)
    assert code == 0
    [row] = [line.split() for line in out.splitlines() if line.strip().startswith("veteran")]
    assert row[:4] == ["veteran", "?", "?", "?"]
    assert "notes=1.1" in row
