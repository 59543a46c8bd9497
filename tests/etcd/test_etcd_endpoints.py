"""Which member the etcd driver asks after a failure (endpoints.py; pure bookkeeping)."""

from __future__ import annotations

from rpclib.transports.etcd.endpoints import Endpoints


def test_a_failed_member_is_left_for_the_next_one() -> None:
    members = Endpoints(3)
    assert members.failed(0, down=False) is True
    assert members.current == 1


def test_failures_of_one_member_seen_by_several_threads_move_on_once() -> None:
    members = Endpoints(3)
    members.failed(0, down=True)
    members.failed(0, down=True)  # another thread, same dead member
    assert members.current == 1


def test_a_member_that_could_not_be_connected_to_sits_out_while_others_are_healthy() -> None:
    members = Endpoints(3)
    members.failed(0, down=True)
    members.failed(1, down=False)  # a stall or an election refusal: not dead
    assert members.current == 2
    members.failed(2, down=False)
    assert members.current == 1  # not back to the dead member 0


def test_when_every_member_sits_out_the_one_back_soonest_is_asked() -> None:
    members = Endpoints(3)
    members.failed(0, down=True)
    members.failed(1, down=True)
    assert members.failed(2, down=True) is False  # nobody healthy: back off
    assert members.current == 0


def test_a_member_that_answers_no_longer_sits_out() -> None:
    members = Endpoints(2)
    members.failed(0, down=True)
    members.failed(1, down=True)
    assert members.current == 0
    members.succeeded(0)
    assert not members.is_down(0)
    assert members.is_down(1)
