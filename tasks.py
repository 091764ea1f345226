"""interp tasks: the list of what the suite can do. Every task takes --model (default: the
embedded SmolLM2-135M-Instruct) and --store (default: interp.duckdb in the working directory).
`invoke --list` shows them all; `invoke --help TASK` shows one task's flags.

Each task's body lives in ``interp/commands/<name>.py``; this file only names them.
"""

from interp.commands.cache import cache  # run prompts through a model, store activations
from interp.commands.check import check  # integrity check (and repair) of a store
from interp.commands.demo import demo  # every study in quick mode, then the report and findings
from interp.commands.eval import eval_  # evaluate a model: perplexity, tasks, toxicity, refusal, KL
from interp.commands.export import export  # the store as plain partitioned Parquet
from interp.commands.export_model import (
           export_model,  # an evaluated point as a transformers checkpoint
)
from interp.commands.heads import heads  # head importance, head pruning, head routing
from interp.commands.layers import layers  # layer similarity, layer dropping, healing
from interp.commands.report import report  # the HTML reports, from the store alone
from interp.commands.safety import safety  # probes, harmful directions, ablation, steering
from interp.commands.sql import runs, sql  # query the store; list runs with provenance
from interp.commands.tests import test  # the test suite, as CI runs it
from interp.commands.weights import weights  # magnitude, Wanda, N:M pruning sweeps

__all__ = ["cache", "check", "demo", "eval_", "export", "export_model", "heads", "layers", "report", "runs", "safety", "sql",
           "test", "weights"]
