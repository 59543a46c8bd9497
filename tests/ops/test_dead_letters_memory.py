"""``rpclib dead-letters`` on memory://: list, show, replay (after an upgrade), purge."""

from __future__ import annotations

import json

import rpclib
from rpclib.access import Access
from rpclib.transports.base import Address, Guarantee
from rpclib.transports.memory import add_account
from tests.ops.scenario import NotesV10, NotesV12, cast_too_new, run, serve, stop
from tests.rpc.helpers import wait_until


def dead_lettered(transport: rpclib.Transport, *texts: str) -> list[str]:
    """Casts at 1.2 refused by a 1.0 server; their dead-letter keys, oldest first."""
    old = serve(transport, "old-node", NotesV10())
    try:
        for text in texts:
            cast_too_new(transport, text)
        wait_until(lambda: len(transport.driver.dead_letters()) == len(texts), what="dead letters")
    finally:
        stop(old)
    return [letter.key for letter in transport.driver.dead_letters()]


def test_list_shows_each_dead_letter_with_its_key_reason_and_method(bus_url, transport):
    [key] = dead_lettered(transport, "hello")
    code, out = run("dead-letters", bus_url, "list")
    assert code == 0
    [row] = [line for line in out.splitlines() if line.startswith(key)]
    assert "cast note v1.2" in row and "UnsupportedVersion" in row and "rpclib/notes" in row


def test_show_decodes_the_header_and_gives_reason_and_attempts(bus_url, transport):
    [key] = dead_lettered(transport, "hello")
    code, out = run("dead-letters", bus_url, "show", key[:6], "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["key"] == key and shown["attempts"] == 1
    assert shown["reason"].startswith("UnsupportedVersion")
    assert shown["kind"] == "CAST"
    assert (shown["header"]["method"], shown["header"]["version"]) == ("note", "1.2")


def test_replay_sends_it_back_to_be_handled_by_an_upgraded_server(bus_url, transport):
    [key] = dead_lettered(transport, "hello")
    new_endpoint = NotesV12()
    new = serve(transport, "new-node", new_endpoint)
    try:
        code, out = run("dead-letters", bus_url, "replay", key)
        assert code == 0, out
        assert new_endpoint.event.wait(30)
    finally:
        stop(new)
    assert new_endpoint.noted == ["hello"]
    assert transport.driver.dead_letters() == []
    assert "(attempt 2)" in out


def test_purge_by_key_removes_only_that_one(bus_url, transport):
    first, second = dead_lettered(transport, "one", "two")
    code, out = run("dead-letters", bus_url, "purge", first)
    assert (code, out) == (0, "purged 1 dead letter\n")
    assert [letter.key for letter in transport.driver.dead_letters()] == [second]


def test_purge_all_empties_the_dead_letters(bus_url, transport):
    dead_lettered(transport, "one", "two")
    code, out = run("dead-letters", bus_url, "purge", "--all")
    assert (code, out) == (0, "purged 2 dead letters\n")
    assert transport.driver.dead_letters() == []


def test_an_unknown_key_is_one_error_line(bus_url, transport, capsys):
    dead_lettered(transport, "one")
    code, _ = run("dead-letters", bus_url, "replay", "ffffffffffff")
    err = capsys.readouterr().err
    assert code == 1
    assert (
        err
        == "rpclib: error: no dead letter with key 'ffffffffffff' (rpclib dead-letters URL list)\n"
    )


def test_replay_to_a_queue_that_is_gone_is_one_error_line_and_keeps_the_letter(
    bus_url, transport, capsys
):
    fanout = Address("rpclib", "notes", fanout=True)
    sub = transport.driver.listen(fanout, lambda incoming: incoming.dead_letter("refused"))
    transport.driver.send(fanout, b"to everyone", guarantee=Guarantee.AT_MOST_ONCE)
    wait_until(lambda: len(transport.driver.dead_letters()) == 1, what="the dead letter")
    sub.close()  # a fanout subscription's queue goes with it
    [letter] = transport.driver.dead_letters()
    code, _ = run("dead-letters", bus_url, "replay", letter.key)
    assert code == 1
    assert capsys.readouterr().err.startswith("rpclib: error: ")
    assert transport.driver.dead_letters() == [letter]


def test_inspect_counts_the_dead_letters(bus_url, transport):
    dead_lettered(transport, "one", "two")
    code, out = run("inspect", bus_url, "--json")
    assert code == 0
    assert json.loads(out)["dead_letters"] == 2


def test_a_least_privilege_account_may_not_replay(bus_url, transport, capsys):
    [key] = dead_lettered(transport, "hello")
    bus = bus_url.removeprefix("memory://")
    grants = Access("app").call(rpclib.Target(topic="notes")).grants()
    add_account(bus, "app", "secret", grants=grants)
    add_account(bus, "root", "secret")
    code, _ = run("dead-letters", f"memory://app:secret@{bus}", "replay", key)
    assert code == 1
    assert capsys.readouterr().err == (
        "rpclib: error: access refused: account 'app' may not replay dead letters "
        "(not in its grants)\n"
    )
    assert [letter.key for letter in transport.driver.dead_letters()] == [key]
