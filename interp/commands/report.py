"""`invoke report`: render the HTML report from the store alone (no model is loaded)."""

from __future__ import annotations

from invoke import task

from interp.cli import user_errors
from interp.commands import DEFAULT_STORE, HELP_COMMON

DEFAULT_OUT = "report"


@task(help={"store": HELP_COMMON["store"],
            "out": f"directory for the HTML pages (default ./{DEFAULT_OUT}); existing pages are replaced"})
@user_errors
def report(c, store=DEFAULT_STORE, out=DEFAULT_OUT):
    """Render the report (index + one page per study) from the store; works offline, no model."""
    from reports.build import build_report
    from store import Store

    rep = build_report(Store(store), out, store_arg=store)
    for page in rep.pages:
        print(f"wrote {page}")
    if rep.missing:
        print(f"missing studies (no run in the store): {', '.join(rep.missing)}")
    print(f"report: {rep.index}")
