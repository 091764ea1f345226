"""The lm-eval page: scores comparable to published ones (lm-evaluation-harness's own tasks), MMLU per
subject with its micro and macro averages labelled, GSM8K per answer filter, and the suite's zero-shot
cloze versions apart. Shown when the store holds lm-eval rows (any study's run)."""

from __future__ import annotations

import html

import duckdb
import pandas as pd

from reports import charts
from reports.html import Page
from reports.panels import Panel, Part, render
from store.queries import lmeval as q
from store.rows import first_row

SLUG = "lmeval"
TITLE = "lm-eval: standard benchmarks"
MAX_GROUPED = 4
"""Most sweep points drawn as grouped bars per subject; more become a heat map."""


def available(con: duckdb.DuckDBPyConnection) -> int | None:
    """The run the page shows, or None when no run holds lm-eval scores (or the store predates them)."""
    has = first_row(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'evals' "
                      "AND column_name = 'harness'"))[0]
    return q.lmeval_run(con) if has else None


def page(con: duckdb.DuckDBPyConnection, run_id: int) -> Page:
    others = q.other_lmeval_runs(con, run_id)
    intro = (f"lm-evaluation-harness scores of run {run_id}, computed by lm-eval's own tasks (prompts, few-shot "
             "examples, filters, metrics) on the model as each point leaves it. Each task name carries its few-shot "
             "settings (<code>lm-eval:mmlu:5shot:s1234</code>: 5 examples ordered by seed 1234), because published "
             "figures differ by them.")
    if others:
        intro += f" Other runs with lm-eval scores (not shown): {', '.join(map(str, others))}."
    return Page(slug=SLUG, title=TITLE, intro=intro, sections=tuple(render(con, parts(run_id))))


def parts(run_id: int) -> list[Part]:
    return [
        Part("Scores", (
            Panel("Every lm-eval task and group at every point", q.scores_sql, (run_id,),
                  lambda df: charts.points_vs_base(df, title="lm-eval score per point"),
                  caption="Red: the unedited model; dashed rule: its value. Group rows are lm-eval's aggregate "
                          "(named in the table's average column) and the suite's macro average (metric *_macro).",
                  say_empty=False),
            Panel("lm-eval scores", q.scores_sql, (run_id,), max_rows=60,
                  columns=("point", "task", "metric", "value", "stderr", "n", "chance", "base_value", "task_version",
                           "average"),
                  caption="stderr as lm-eval reports it (empty where it reports N/A, e.g. one item); n: items "
                          "scored."))),
        Part("MMLU", (
            Panel("Per subject", q.mmlu_subjects_sql, (run_id,), _subjects, caption=_subjects_caption,
                  empty="No MMLU task in this run: add lm-eval:mmlu (5 shots from the dev split, letters A-D: the "
                        "Hendrycks protocol)."),
            Panel("MMLU averages: micro and macro", q.mmlu_averages_sql, (run_id,),
                  lambda d: charts.bars(d, x="point", y="accuracy", color="average",
                                        title="MMLU: micro vs macro average", x_title=None, y_title="accuracy",
                                        color_title="average",
                                        tooltip=["point", "average", "accuracy", "stderr", "n", "subjects"]),
                  caption="micro: lm-eval's mmlu group score, every question counts once (subjects weighted by "
                          "size); macro: the mean of the subject accuracies, every subject counts once. Chance is "
                          "0.25.",
                  empty="MMLU subjects were scored on their own, not as lm-eval's mmlu group: no group averages."),
            Panel("MMLU averages", q.mmlu_averages_sql, (run_id,), say_empty=False))),
        Part("GSM8K", (
            Panel("GSM8K exact match per answer filter", q.gsm8k_sql, (run_id,),
                  lambda d: charts.bars(d, x="point", y="exact_match", color="filter", title="GSM8K exact match",
                                        x_title=None, y_title="exact match", color_title="answer filter",
                                        tooltip=["point", "task", "filter", "exact_match", "stderr", "n"]),
                  caption="strict-match: the number after 'The answer is' (the chain-of-thought format); "
                          "flexible-extract: the last number in the generation. Each bar names its filter.",
                  empty="No GSM8K task in this run: add lm-eval:gsm8k_cot (8-shot chain of thought; slow on CPU)."),)),
        Part("The suite's zero-shot cloze tasks", (
            Panel("Zero-shot cloze scores (not lm-eval's protocol)", q.cloze_sql, (run_id,),
                  caption="The suite's own mmlu, boolq and gsm8k tasks: each choice scored alone after the question, "
                          "no letters, no shots. Comparable between points of one sweep, not with published tables.",
                  empty="This run has none of the suite's zero-shot cloze tasks."),)),
    ]


def _subjects(df: pd.DataFrame) -> charts.AnyChart:
    tips = ["point", "subject", "category", "accuracy", "stderr", "n", "task"]
    if df["point"].nunique() <= MAX_GROUPED:
        chart = charts.bars(df, x="subject", y="accuracy", color="point", horizontal=True, sort="ascending",
                            title="MMLU accuracy per subject", x_title=None, y_title="accuracy",
                            tooltip=tips, color_title="point")
        return chart.properties(height=_height(df))
    return charts.heatmap(df, x="point", y="subject", color="accuracy", domain=(0, 1),
                          title="MMLU accuracy per subject", x_title=None, y_title=None,
                          color_title="accuracy", tooltip=tips, size=24 * df["point"].nunique() + 40,
                          height=12 * df["subject"].nunique() + 20)


def _subjects_caption(df: pd.DataFrame) -> str:
    shots = ", ".join(f"{k} shots (seed {s})" for k, s in sorted(set(zip(df["num_fewshot"], df["fewshot_seed"]))))
    return html.escape(f"{df['subject'].nunique()} subjects, {shots}; hover a bar for its task name, stderr and "
                       "items.")


def _height(df: pd.DataFrame) -> int:
    return max(120, 14 * df["subject"].nunique() * min(df["point"].nunique(), MAX_GROUPED))
