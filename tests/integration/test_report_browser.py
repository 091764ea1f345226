"""The report as a user sees it: every page opened in headless Chromium, every chart drawn,
no JavaScript or console errors, a screenshot of each page.

Screenshots go to $INTERP_SCREENSHOTS when set (CI keeps them), else to pytest's tmp dir.
Skipped only when no Chromium/Chrome binary exists (Debian: apt-get install chromium).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from reports.browser import Chromium, check_page, check_pages, find_browser

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_browser() is None, reason="no Chromium/Chrome found: `apt-get install chromium` "
                                                      "(Debian) or set INTERP_CHROMIUM to a browser binary"),
]


def shots_dir(tmp_path: Path) -> Path:
    return Path(os.environ["INTERP_SCREENSHOTS"]) if os.environ.get("INTERP_SCREENSHOTS") else tmp_path / "shots"


def build_store(path: Path) -> None:
    """Every study's tables with fixed numbers (the page tests' store): every chart kind the report has."""
    from store import Store
    from tests.unit.test_reports_pages import WRITERS

    with Store(path).connect() as con:
        for write in WRITERS.values():
            write(con)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from reports.build import build_report
    from store import Store

    tmp = tmp_path_factory.mktemp("report")
    build_store(tmp / "r.duckdb")
    return build_report(Store(tmp / "r.duckdb"), tmp / "site")


def test_every_page_renders_without_errors(report, tmp_path):
    checks = check_pages(list(report.pages), shots_dir(tmp_path))
    assert [c.path.name for c in checks] == ["index.html", *[f"{s}.html" for s in report.studies]]
    for c in checks:
        assert not c.errors, f"{c.path.name}: {c.errors}"
        assert not c.warnings, f"{c.path.name}: {c.warnings}"
        n_specs = c.path.read_text().count("<div class='chart' id='chart-")
        assert len(c.charts) == n_specs == c.state["total"] == c.state["done"], (c.path.name, c.state)
        for chart in c.charts:
            assert chart["svg"] and chart["marks"] > 0, f"{c.path.name} {chart['id']} drew nothing: {chart}"
        assert c.screenshot.stat().st_size > 10_000  # a real picture, not a blank page
        print(f"screenshot: {c.screenshot}")
    assert report.studies == ("layers", "weights", "heads", "safety") and not report.missing
    assert sum(len(c.charts) for c in checks) >= 20


def test_checker_catches_broken_pages(tmp_path):
    """The checks above can fail: a chart that throws, a chart with no marks, a script error."""
    from reports import charts
    from reports.html import ChartBlock, Page, Section, render_page

    df = pd.DataFrame({"x": ["a", "b"], "y": [1.0, 2.0]})
    good = charts.bars(df, x="x", y="y", title="t", x_title="x", y_title="y", tooltip=["x", "y"])
    empty = charts.bars(df.iloc[:0], x="x", y="y", title="t", x_title="x", y_title="y", tooltip=["x", "y"])
    page = Page(slug="broken", title="broken", intro="", sections=(Section("s", (
        ChartBlock("good", good, "SELECT 1"), ChartBlock("empty", empty, "SELECT 1"))),))
    text = render_page(page, "s.duckdb")
    path = tmp_path / "broken.html"
    # An invalid spec (unknown mark type) for the first chart, and a stray script error.
    text = text.replace('"mark":{"type":"bar"}', '"mark":{"type":"nosuchmark"}', 1)
    head, tail = text.rsplit("</body>", 1)  # the last one: the inlined bundle mentions </body> too
    text = head + "<script>undefinedFunction()</script></body>" + tail
    path.write_text(text)
    with Chromium() as browser:
        c = check_page(browser, path)
    assert not c.ok
    assert any("chart-1 failed to render" in e for e in c.errors), c.errors
    assert any("undefinedFunction" in e for e in c.errors), c.errors
    assert c.charts[1]["svg"] and c.charts[1]["marks"] == 0  # the empty chart drew no data marks
    assert any("Infinite extent" in w for w in c.warnings)  # and Vega warned about it
