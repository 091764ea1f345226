"""Evaluation of a model as it is (with or without an intervention active): perplexity,
multiple-choice and exact-match accuracy, generation toxicity and refusal, KL to the base model.

``evaluate(loaded, EvalCfg(...), reference=make_reference(loaded, cfg))`` returns a list of
``Score`` rows that ``interp.studies.sweep`` writes to the ``evals`` table.
"""

from interp.evals.config import BUDGETS, TASKS, UNITS, EvalCfg, EvalError, Score
from interp.evals.kl import Reference
from interp.evals.refusal import is_heldout, refusal_phrase
from interp.evals.runner import evaluate, make_reference, run_task

__all__ = ["BUDGETS", "TASKS", "UNITS", "EvalCfg", "EvalError", "Reference", "Score", "evaluate", "is_heldout",
           "make_reference", "refusal_phrase", "run_task"]
