"""Every SQL query the README shows (each ```sql block and each `invoke sql "..."` in a ```bash block)
runs through `invoke sql`'s code path on a store holding every study and returns rows with the
columns the README promises; the five questions read only the newest run of their study, so a
store that also holds an older (quick) run with other numbers answers them the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from store import Store
from store.sql import run_sql

README = Path(__file__).resolve().parents[2] / "README.md"

# Columns of each README query, in the order the README shows them.
EXPECTED = [
    ("cached vectors per layer", ["hook", "layer", "n", "d"]),
    ("cosine with the next layer", ["layer", "cos_next"]),
    ("1. most alike residual states", ["layer_a", "layer_b", "cosine"]),
    ("2. cheapest block per size", ["n", "strategy", "layers", "ppl", "base"]),
    ("3. top heads", ["layer", "head", "delta_loss"]),
    ("4. probe accuracy by layer", ["hook", "layer", "accuracy"]),
    ("5. toxicity per edit", ["point", "toxicity", "stderr", "n"]),
]
STUDY_TABLES = ("layer_similarity", "layer_drops", "heads_importance", "safety_probes", "evals")
LATEST = re.compile(r"run_id = \(SELECT max\(run_id\) FROM runs WHERE kind = '(\w+)'\)")


def readme_queries() -> list[str]:
    out = []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", README.read_text(), re.DOTALL):
        if lang == "sql":
            out.append(body.strip().rstrip(";"))
        elif lang == "bash":
            out += re.findall(r'invoke sql (?:--\S+ \S+ )*"(.*?)"', body, re.DOTALL)
    return out


def study_queries() -> list[str]:
    """The queries on study results (the five questions): those that must pick one run."""
    return [q for q in readme_queries() if re.search(r"\bFROM (" + "|".join(STUDY_TABLES) + r")\b", q)]


def make_store(path: Path, older_run: bool) -> Store:
    """Every study's fixed numbers and a real capture from a tiny model. ``older_run``: first an older run of
    each study whose numbers differ (what a quick run before a full one leaves in the store)."""
    from interp.capture.capture import CaptureCfg, capture
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama
    from tests.unit.test_reports_pages import WRITERS

    st = Store(path)
    with st.connect() as con:
        if older_run:
            old = [w(con, tag="quick") for w in WRITERS.values()]
            ids = ", ".join(map(str, old))
            con.execute(f"UPDATE layer_similarity SET cosine = 0.999 WHERE run_id IN ({ids})")
            con.execute(f"UPDATE evals SET value = value / 2 WHERE run_id IN ({ids})")
            con.execute(f"UPDATE heads_importance SET value = value + 10 WHERE run_id IN ({ids})")
            con.execute(f"UPDATE safety_probes SET mean = 1.0 WHERE run_id IN ({ids})")
        for write in WRITERS.values():
            write(con)
    tiny = wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")
    capture(tiny, st, CaptureCfg(prompts="harmful,neutral", hooks="resid_post", positions="last", backend="torch",
                                 limit=4), progress=False)
    return st


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    return make_store(tmp / "one.duckdb", older_run=False), make_store(tmp / "two.duckdb", older_run=True)


def test_the_readme_has_the_queries_this_test_checks():
    queries = readme_queries()
    assert len(queries) == len(EXPECTED), queries
    assert len(study_queries()) == 5
    for q in study_queries():  # every question on study results names the run it reads
        assert LATEST.search(q), q


@pytest.mark.parametrize("i", range(len(EXPECTED)), ids=[name for name, _ in EXPECTED])
def test_readme_query_returns_rows_with_its_columns(stores, i):
    sql = readme_queries()[i]
    for st in stores:
        df = run_sql(st, sql)
        assert not df.empty, EXPECTED[i][0]
        assert list(df.columns) == EXPECTED[i][1]


@pytest.mark.parametrize("i", range(5))
def test_questions_read_only_the_newest_run(stores, i):
    """With an older run of each study in the store the answers do not change; without the run filter they
    would (so this test can fail)."""
    import pandas as pd

    one, two = stores
    sql = study_queries()[i]
    pd.testing.assert_frame_equal(run_sql(two, sql), run_sql(one, sql))
    unfiltered = re.sub(LATEST.pattern + r" AND ", "", sql)
    assert unfiltered != sql
    assert not run_sql(two, unfiltered).equals(run_sql(one, unfiltered))
