"""Peak memory of `llmpress compress` on a ~1.1B-parameter random-weight Llama
(TinyLlama-1.1B's shape with SmolLM2's 49,152-token vocabulary: bf16 ≈ 2.2 GB on disk).

    .venv/bin/python benchmarks/memory_1b.py [--folder out/random-llama-1b] [--num-samples 16] [--max-seq-len 256]

The model is written tensor by tensor (never whole in memory), then compressed to
W4A16 (group 128) in a separate process under GNU time; the table compares its
peak RSS with the checkpoint's size on disk. Layer-wise streaming is what keeps
the peak near one layer in float32 plus the calibration activations.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=False,
             rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")


def build(folder: Path, tokenizer_src: Path) -> None:
    from transformers import LlamaConfig

    from llmpress.checkpoint.shards import ShardWriter

    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**SHAPE)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    h, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    w = ShardWriter(folder, max_shard_bytes=512 << 20)
    w.add("model.embed_tokens.weight", rnd(cfg.vocab_size, h))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        for name, shape in (("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)),
                            ("mlp.down_proj", (h, f))):
            w.add(f"{p}.{name}.weight", rnd(*shape))
        w.add(f"{p}.input_layernorm.weight", torch.ones(h, dtype=torch.bfloat16))
        w.add(f"{p}.post_attention_layernorm.weight", torch.ones(h, dtype=torch.bfloat16))
    w.add("model.norm.weight", torch.ones(h, dtype=torch.bfloat16))
    w.add("lm_head.weight", rnd(cfg.vocab_size, h))
    w.close()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_src / name, folder / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/random-llama-1b")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=256)
    a = ap.parse_args()
    from llmpress.models import default_model_dir

    folder = Path(a.folder)
    if not (folder / "config.json").is_file():
        t = time.time()
        build(folder, default_model_dir())
        print(f"built {folder} in {time.time() - t:.0f} s", file=sys.stderr)
    disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    params = disk // 2
    out = folder.with_name(folder.name + "-w4a16")
    cmd = [sys.executable, "-m", "llmpress.cli", "compress", str(folder),
           "--scheme", "W4A16", "--num-samples", str(a.num_samples), "--max-seq-len", str(a.max_seq_len),
           "--output", str(out), "--overwrite"]
    # Sample the child's RSS (5 Hz) beside its progress output, to say in which phase the peak falls;
    # the exact peak comes from the kernel (getrusage of the reaped child).
    import psutil

    log = Path(tempfile.mkdtemp()) / "compress.log"
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        ps, trace = psutil.Process(proc.pid), []
        while proc.poll() is None:
            try:
                trace.append((time.time() - t0, ps.memory_info().rss, log.read_text()[-160:].replace("\r", "\n").strip().splitlines()[-1:]))
            except (psutil.Error, OSError):
                pass
            time.sleep(0.2)
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(log.read_text()[-3000:])
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    at = max(trace, key=lambda x: x[1]) if trace else (0, 0, [])
    print(f"peak sampled RSS {at[1] / 1e9:.2f} GB at {at[0]:.0f} s, during: {(at[2] or ['?'])[0][:120]}", file=sys.stderr)
    phases: dict[str, int] = {}  # progress label (e.g. "3/22") -> highest RSS sampled while it showed
    for _, r, line in trace:
        m = re.search(r"(\d+/\d+) \[", line[0]) if line else None
        key = m.group(1) if m else (line[0][:30] if line else "start")
        phases[key] = max(phases.get(key, 0), r)
    print("RSS by phase (GB): " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in phases.items()), file=sys.stderr)
    out_disk = sum(q.stat().st_size for q in out.glob("*.safetensors"))
    print("| model | params | bf16 on disk | W4A16 on disk | compress wall | peak RSS | peak RSS / disk |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| random Llama ({SHAPE['num_hidden_layers']} layers, hidden {SHAPE['hidden_size']}) | {params / 1e9:.2f} B "
          f"| {disk / 1e9:.2f} GB | {out_disk / 1e9:.2f} GB | {float(wall):.0f} s | {rss / 1e9:.2f} GB | {rss / disk:.2f} |")
    print(json.dumps(dict(params=params, disk_bytes=disk, out_bytes=out_disk, wall_s=float(wall), peak_rss_bytes=rss,
                          samples=a.num_samples, max_seq_len=a.max_seq_len)))


if __name__ == "__main__":
    main()
