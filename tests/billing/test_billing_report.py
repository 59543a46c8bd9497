"""The usage table."""

from __future__ import annotations

from services.billing import ProjectUsage, format_usage


def test_the_usage_table_lists_projects_with_two_decimals_and_a_totals_line() -> None:
    rows = [
        ProjectUsage("proj-a", 2, 28.0, 28672.0, 280.0),
        ProjectUsage("proj-long-name", 1, 7.25, 3584.0, 17.5),
    ]

    table = format_usage(rows)

    assert table.splitlines() == [
        "project         instances  vCPU-hours   MB-hours  GB-hours",
        "--------------  ---------  ----------  ---------  --------",
        "proj-a                  2       28.00  28,672.00    280.00",
        "proj-long-name          1        7.25   3,584.00     17.50",
        "--------------  ---------  ----------  ---------  --------",
        "total                   3       35.25  32,256.00    297.50",
    ]


def test_an_empty_report_still_has_its_header_and_zero_totals() -> None:
    lines = format_usage([]).splitlines()

    assert lines[0].split() == ["project", "instances", "vCPU-hours", "MB-hours", "GB-hours"]
    assert lines[-1].split() == ["total", "0", "0.00", "0.00", "0.00"]
