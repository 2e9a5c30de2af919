#!/usr/bin/env bash
# The test suite, on CPU, offline (tiny random Llamas plus the real default model).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/setup.sh
.venv/bin/ruff check --quiet .   # the linter (settings in pyproject.toml) runs before the tests
exec .venv/bin/python -m pytest "$@"
