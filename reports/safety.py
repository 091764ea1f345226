"""The safety study page (grows as the study's tables land)."""

from __future__ import annotations

from reports.common import sweep_section


def sections(con, run_id: int) -> list:
    return [sweep_section(con, run_id)]


def findings(con, run_id: int) -> list[str]:
    return []
