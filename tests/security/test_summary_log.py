"""Bad-message logging is bounded: the first line at once, then exact counts in summaries."""

from __future__ import annotations

import logging

import pytest

from rpclib.logsummary import SummaryLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_the_first_event_of_a_kind_is_written_at_once(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = SummaryLog(logging.getLogger("t.first"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t.first"):
        log.log(logging.ERROR, "malformed messages", "bad message %d", 1)
    assert lines(caplog) == ["bad message 1"]
    assert caplog.records[0].levelno == logging.ERROR


def test_events_within_the_interval_are_counted_and_summarised_with_the_next_line(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = SummaryLog(logging.getLogger("t.held"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t.held"):
        for i in range(1000):
            log.log(logging.ERROR, "malformed messages", "bad message %d", i)
        clock.now += 10
        log.log(logging.ERROR, "malformed messages", "bad message %d", 1000)
    assert lines(caplog) == [
        "bad message 0",
        "bad message 1000 (and 999 more malformed messages in the last 10s)",
    ]


def test_flush_writes_what_was_held_back_with_the_last_example(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = SummaryLog(logging.getLogger("t.flush"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t.flush"):
        for i in range(5):
            log.log(logging.WARNING, "rejected calls", "rejected call %d", i)
        clock.now += 3
        log.flush()
        log.flush()
    assert lines(caplog) == [
        "rejected call 0",
        "4 more rejected calls in the last 3s (the last: rejected call 4)",
    ]


def test_kinds_are_limited_separately(caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    log = SummaryLog(logging.getLogger("t.kinds"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t.kinds"):
        log.log(logging.ERROR, "malformed messages", "bad")
        log.log(logging.WARNING, "expired requests", "late")
        log.log(logging.ERROR, "malformed messages", "bad again")
    assert lines(caplog) == ["bad", "late"]


def test_disabled_levels_cost_nothing_and_write_nothing(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = SummaryLog(logging.getLogger("t.off"), interval=10, clock=clock)
    with caplog.at_level(logging.ERROR, "t.off"):
        log.log(logging.WARNING, "expired requests", "late")
        log.flush()
    assert lines(caplog) == []
