#!/usr/bin/env bash
# `llmpress eval` at the issue's sizes on the demo's three checkpoints (run scripts/demo.sh first):
# MMLU 500 questions 5-shot, GSM-style 50 problems 5-shot, BBH-style 2 per subtask (48) 3-shot,
# HumanEval 50 problems greedy pass@1, perplexity / KL / top-1 over 16,384 Lee tokens.
# The base model is evaluated once (cached by content hash) and reused for every scheme.
#   bash benchmarks/eval_full.sh [DEMO_DIR=out/demo] [OUT=out/eval-full]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEMO=${1:-out/demo}
OUT=${2:-out/eval-full}
for scheme in W4A16 W8A8 FP8_DYNAMIC; do
  start=$(date +%s)
  .venv/bin/llmpress eval "$DEMO/models/$scheme" --base default \
      --tasks mmlu,gsm,bbh,humaneval,ppl --limit mmlu=500,gsm=50,bbh=2,humaneval=50 \
      --num-fewshot mmlu=5,gsm=5,bbh=3 --humaneval-samples 0 --ppl-tokens 16384 \
      --output "$OUT/$scheme" --overwrite
  echo "eval $scheme: $(( $(date +%s) - start )) s (base included the first time)"
  cat "$OUT/$scheme/eval.md"
done
