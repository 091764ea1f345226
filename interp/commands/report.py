"""`invoke report`: render the HTML report from the store alone (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task
from invoke.exceptions import Exit

from interp.commands import DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import CliTask, user_errors

DEFAULT_OUT = "report"


@task(klass=CliTask, help={"store": HELP_COMMON["store"],
            "out": f"directory for the HTML pages (default ./{DEFAULT_OUT}); existing pages are replaced",
            "check": "open every page in headless Chromium: fail on any JS/console error or undrawn chart, "
                     "save screenshots under OUT/screenshots"})
@user_errors
def report(c: Context, store: str = DEFAULT_STORE, out: str = DEFAULT_OUT, check: bool = False) -> None:
    """Render the report (index + one page per study) from the store; works offline, no model."""
    from reports.build import build_report
    from store import Store

    rep = build_report(Store(store), out, store_arg=store)
    for page in rep.pages:
        print(f"wrote {page}")
    if rep.missing:
        print(f"missing studies (no run in the store): {', '.join(rep.missing)}")
    if check:
        check_in_browser(list(rep.pages), rep.out / "screenshots")
    print(f"report: {rep.index}")


def check_in_browser(pages: list[Path], shots: Path) -> None:
    from reports.browser import check_pages

    bad = 0
    for res in check_pages(pages, shots):
        drawn = sum(1 for ch in res.charts if ch["svg"] and ch["marks"] > 0)
        print(f"{'ok  ' if res.ok else 'FAIL'} {res.path.name}: {drawn}/{len(res.charts)} charts drawn, "
              f"screenshot {res.screenshot}")
        for msg in res.errors + res.warnings:
            print(f"     {msg}")
        bad += not res.ok
    if bad:
        raise Exit(f"error: {bad} page(s) failed in the browser", code=1)
