"""`invoke eval` run as a user would, into a temporary store."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lmeval"


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], check=False, cwd=REPO, capture_output=True, text=True,
                          # one torch thread unless told otherwise: far faster on a shared, loaded CPU
                          env={**os.environ, "PYTHONUNBUFFERED": "1",
                               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


@pytest.mark.integration
def test_eval_prints_a_table_and_stores_it(tmp_path):
    store = str(tmp_path / "eval.duckdb")
    args = ("eval", "--model", "smollm2-135m-instruct", "--tasks", "ppl,facts,arith", "--budget", "smoke",
            "--store", store)
    r = invoke(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "eval run 1" in r.stdout and "perplexity" in r.stdout and "accuracy" in r.stdout
    assert "run 1: 6 scores stored" in r.stdout
    con = duckdb.connect(store, read_only=True)
    rows = con.execute("SELECT e.study, e.point, e.task, e.metric, e.value, e.stderr, e.n, e.chance, r.kind, r.status "
                       "FROM evals e JOIN runs r USING (run_id) ORDER BY task, metric").fetchall()
    con.close()
    assert [(x[2], x[3]) for x in rows] == [("arith", "accuracy"), ("facts", "accuracy"), ("facts", "accuracy_norm"),
                                            ("ppl", "nll"), ("ppl", "norm_loss"), ("ppl", "perplexity")]
    assert all(x[0] == "eval" and x[1] == "base" and x[8] == "eval" and x[9] == "complete" for x in rows)
    assert all(x[5] is not None for x in rows)  # every metric has its standard error
    facts = next(x for x in rows if x[3] == "accuracy" and x[2] == "facts")
    assert facts[7] == 0.25 and facts[6] == 8
    again = invoke(*args)  # same command: the stored run is reused, nothing duplicated
    assert again.returncode == 0 and "run 1: 6 scores stored" in again.stdout


@pytest.mark.parametrize("args,message", [
    (["--tasks", "ppl,factz"], "unknown evaluation task 'factz'"),
    (["--budget", "huge"], "unknown budget 'huge'"),
    (["--tasks", "mmlu", "--mmlu-path", "/no/such/mmlu.parquet"], "does not exist"),
])
def test_bad_input_is_one_line_before_loading(tmp_path, args, message):
    r = invoke("eval", *args, "--store", str(tmp_path / "s.duckdb"))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


# ---------- lm-evaluation-harness tasks, from the fixture files ----------

@pytest.mark.integration
def test_eval_runs_lm_eval_tasks_from_local_files(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra interp[lmeval]")
    store = str(tmp_path / "s.duckdb")
    args = ("eval", "--lm-eval", "arc_easy,boolq", "--lm-eval-data", str(FIXTURES), "--store", store)
    r = invoke(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lm-eval:arc_easy:0shot" in r.stdout and "run 1: 3 scores stored" in r.stdout
    con = duckdb.connect(store, read_only=True)
    rows = con.execute("SELECT task, metric, n, harness, task_version, num_fewshot, chance, "
                       "dataset->>'source' FROM evals ORDER BY task, metric").fetchall()
    con.close()
    assert [r[:2] for r in rows] == [("lm-eval:arc_easy:0shot", "acc"), ("lm-eval:arc_easy:0shot", "acc_norm"),
                                     ("lm-eval:boolq:0shot", "acc")]
    assert all(r[2] == 6 and r[3].startswith("lm-eval 0.4") and r[5] == 0 for r in rows)
    assert [r[4] for r in rows] == ["1.0", "1.0", "2.0"] and rows[2][6] == 0.5
    assert all(r[7] == f"local {FIXTURES}" for r in rows)
    again = invoke(*args)  # the same command reuses the stored run
    assert again.returncode == 0 and "run 1: 3 scores stored" in again.stdout


@pytest.mark.integration
@pytest.mark.parametrize("args,message", [
    (["--lm-eval", "mmlu:five"], "malformed lm-eval task"),
    (["--lm-eval", "boolq", "--lm-eval-data", "EMPTY"], "aps/super_glue/boolq/validation.jsonl"),
])
def test_bad_lm_eval_input_is_one_line(tmp_path, args, message):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra interp[lmeval]")
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    r = invoke("eval", *args, "--store", str(tmp_path / "s.duckdb"))
    # (a sweep's progress bar may precede the message on its line)
    lines = [x.split("error: ", 1)[1] for x in r.stderr.splitlines() if "error: " in x]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
