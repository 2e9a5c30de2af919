"""Make llm-compressor 0.14 checkpoints for the engine's foreign-checkpoint tests.

    .venv/bin/python benchmarks/llmcompressor_checkpoints.py [--out out/llmc-ckpt]
    LLMPRESS_LLMC_DIR=out/llmc-ckpt .venv/bin/python -m pytest tests/engine/test_foreign_checkpoints.py

Runs benchmarks/llmcompressor_run.py in llm-compressor's own venv on the default model
(W4A16 g64, W4A16_ASYM g64, W8A8, FP8_DYNAMIC) and on a random Llama with hidden size 256,
where group 128 divides every layer (W4A16 g128). 16 chat samples x 256 tokens each: enough
for a valid checkpoint. (llm-compressor 0.14 no longer writes act-order "group" / g_idx
checkpoints; the test that the engine refuses those adds a g_idx to the W4A16 one, as older
versions wrote it.)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/llmc-ckpt")
    ap.add_argument("--llmc-python", default="/work/venvs/llmcompressor/bin/python")
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from conftest import make_tiny_llama
    from llmpress.compress.dataset import calibration_samples
    from llmpress.models import resolve_model

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_model("default")
    calib = out / "calib.json"
    samples = calibration_samples("sharegpt", AutoTokenizer.from_pretrained(base), 16, 256)
    calib.write_text(json.dumps({"input_ids": [s[0].tolist() for s in samples]}))
    wide = out / "base-llama-h256"
    if not (wide / "config.json").is_file():
        make_tiny_llama(wide, base, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    runs = {
        "W4A16-g64": (base, "W4A16", 64, None),
        "W4A16_ASYM-g64": (base, "W4A16_ASYM", 64, None),
        "W8A8": (base, "W8A8", 64, None),
        "FP8_DYNAMIC": (base, "FP8_DYNAMIC", 64, None),
        "W4A16-g128-h256": (wide, "W4A16", 128, None),
    }
    for name, (model, scheme, group, actorder) in runs.items():
        dst = out / name
        if (dst / "config.json").is_file():
            print(f"{name}: exists")
            continue
        cmd = [a.llmc_python, str(HERE / "llmcompressor_run.py"), "--model", str(model), "--calib", str(calib),
               "--scheme", scheme, "--group-size", str(group), "--output", str(dst)]
        if actorder:
            cmd += ["--actorder", actorder]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{name}: llm-compressor failed\n{p.stderr[-3000:]}")
        print(f"{name}: {p.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
