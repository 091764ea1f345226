"""`invoke demo` end to end, as a user runs it, on tiny random-init models saved to a directory.

The embedded model makes every study take minutes even at the smoke budget on this CPU, so
the tests run the demo's real path (model directory -> studies -> store -> report -> findings)
on tiny Llamas: one study twice (nothing is recomputed the second time), and all four studies
once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.conftest import byte_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.mark.integration
def test_demo_runs_steps_then_report_and_findings_and_resumes(tiny_dir, tmp_path):
    from reports.browser import find_browser
    from store import Store
    from store.sql import run_sql

    store, out = tmp_path / "demo.duckdb", tmp_path / "site"
    args = ("demo", "--model", str(tiny_dir), "--budget", "smoke", "--studies", "heads", "--store", str(store),
            "--out", str(out))
    r = invoke(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [l.strip() for l in r.stdout.splitlines() if l.startswith("[")]
    assert [s.split("]")[0] + "]" for s in steps] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert steps[1].startswith("[2/4] heads (smoke)") and steps[2] == "[3/4] report"
    assert f"report: {out / 'index.html'}" in r.stdout
    findings = [l for l in r.stdout.splitlines() if l.startswith("  - ")]
    assert any(f.startswith("  - heads: the most important head is layer") for f in findings), r.stdout
    assert "(this store holds no run of: layers, weights, safety)" in r.stdout
    runs = run_sql(Store(store), "SELECT run_id, kind, status FROM runs WHERE kind = 'heads'")
    assert list(runs["status"]) == ["complete"]
    n_runs = run_sql(Store(store), "SELECT count(*) AS n FROM runs")["n"].item()
    n_evals = run_sql(Store(store), "SELECT count(*) AS n FROM evals")["n"].item()
    base = run_sql(Store(store), "SELECT count(*) AS n FROM evals WHERE point = 'base'")["n"].item()
    assert n_evals > base > 0
    assert (out / "heads.html").exists() and "Missing studies" in (out / "index.html").read_text()

    again = invoke(*args)  # everything is in the store: nothing is recomputed or duplicated
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {runs['run_id'].item()} complete" in again.stdout
    assert run_sql(Store(store), "SELECT count(*) AS n FROM evals")["n"].item() == n_evals
    assert run_sql(Store(store), "SELECT count(*) AS n FROM runs")["n"].item() == n_runs
    assert "gradient importance" not in again.stderr  # no importance recomputed

    if find_browser():  # the real pipeline's pages, as a user sees them
        chk = invoke("report", "--store", str(store), "--out", str(out), "--check")
        assert chk.returncode == 0, chk.stdout[-3000:] + chk.stderr[-2000:]
        assert "FAIL" not in chk.stdout and "ok   heads.html" in chk.stdout


@pytest.fixture(scope="module")
def tiny17_dir(tmp_path_factory):
    """17 layers: the safety smoke budget probes layers 0, 8 and 16."""
    from tests.conftest import byte_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny-model-17")
    tiny_llama(n_layers=17).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


STUDY_NAMES = ("layers", "weights", "heads", "safety")


@pytest.mark.integration
def test_demo_runs_every_study_then_the_report_and_one_finding_each(tiny17_dir, tmp_path):
    """`invoke demo --budget smoke` with all four studies: numbered steps with sub-steps per phase, every
    study's run complete in the store, the index and four study pages written, one headline per study."""
    import re

    from store import Store
    from store.sql import run_sql

    store, out = tmp_path / "all.duckdb", tmp_path / "site"
    r = invoke("demo", "--model", str(tiny17_dir), "--budget", "smoke", "--store", str(store), "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    steps = [l.strip() for l in lines if l.startswith("[")]
    assert [s.split("]")[0] + "]" for s in steps] == [f"[{i}/7]" for i in range(1, 8)]
    for i, name in enumerate(STUDY_NAMES, start=2):
        assert steps[i - 1].startswith(f"[{i}/7] {name} (smoke)"), steps
        subs = [l.strip() for l in lines if re.match(rf"^  {i}\.\d+ ", l)]
        assert [s.split()[0] for s in subs] == [f"{i}.{j}" for j in range(1, len(subs) + 1)], subs
        assert len(subs) >= 3 and "sweep" in subs[-1], (name, subs)
    assert sum(l.strip().startswith("stored: ") and "evals " in l for l in lines) == 4, r.stdout
    runs = run_sql(Store(store), "SELECT kind, status FROM runs WHERE kind IN ('layers', 'weights', 'heads', "
                                 "'safety') ORDER BY run_id")
    assert list(runs["kind"]) == list(STUDY_NAMES) and set(runs["status"]) == {"complete"}, runs
    for name in ("index", *STUDY_NAMES):
        assert (out / f"{name}.html").stat().st_size > 10_000
    assert "Missing studies" not in (out / "index.html").read_text()
    assert f"report: {out / 'index.html'}" in r.stdout
    findings = [l[4:] for l in lines if l.startswith("  - ")]
    assert [f.split(":")[0] for f in findings] == list(STUDY_NAMES), findings
    after = lines[next(i for i, l in enumerate(lines) if l.startswith("  what each budget can detect")) + 1:]
    detectable = [l.strip() for l in after if l.startswith("    ") and " (run " in l]
    assert [d.split(" (run")[0] for d in detectable] == list(STUDY_NAMES), r.stdout[-3000:]
    # the layer study's smoke budget scores perplexity on one window: nothing to pair, and it says so
    assert "no paired comparisons stored" in detectable[0] and "smallest change detectable" in detectable[-1]


def test_demo_rejects_bad_flags_before_loading_anything(tmp_path):
    for args, msg in ((["--studies", "nope"], "unknown study 'nope'"), (["--budget", "huge"], "--budget takes one of smoke, quick, full"),
                      (["--full", "--budget", "smoke"], "disagree")):
        r = invoke("demo", *args, "--store", str(tmp_path / "s.duckdb"))
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr
    assert not (tmp_path / "s.duckdb").exists()
