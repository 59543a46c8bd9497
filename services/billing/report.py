"""Usage reports as fixed-width text tables."""

from __future__ import annotations

from collections.abc import Sequence

from services.billing.ledger import ProjectUsage

_HEADERS = ("project", "instances", "vCPU-hours", "MB-hours", "GB-hours")


def format_usage(rows: Sequence[ProjectUsage]) -> str:
    """A table of ``rows`` (project, instances, vCPU-, MB- and GB-hours) with a totals line.

    Numbers are right-aligned with two decimals and thousands separators.
    """
    total = ProjectUsage(
        project_id="total",
        instances=sum(r.instances for r in rows),
        vcpu_hours=sum(r.vcpu_hours for r in rows),
        memory_mb_hours=sum(r.memory_mb_hours for r in rows),
        disk_gb_hours=sum(r.disk_gb_hours for r in rows),
    )
    body = [_cells(r) for r in rows]
    footer = _cells(total)
    widths = [max(len(line[i]) for line in (_HEADERS, *body, footer)) for i in range(len(_HEADERS))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(_HEADERS), rule, *(line(c) for c in body), rule, line(footer)])


def _cells(row: ProjectUsage) -> tuple[str, str, str, str, str]:
    return (
        row.project_id,
        str(row.instances),
        f"{row.vcpu_hours:,.2f}",
        f"{row.memory_mb_hours:,.2f}",
        f"{row.disk_gb_hours:,.2f}",
    )
