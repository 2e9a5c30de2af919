"""The card model's shape on this CPU, side by side with llama.cpp on the same random weights (issue 17).

    python benchmarks/card_scale.py SYNTH_DIR W4A16_DIR [--gguf OUT.gguf] [--venv /work/venvs/llamacpp]
                                    [--threads 2] [--prompt 256] [--gen 32] [--streams 1,4,16] [--no-dense]
                                    [--llama-bufts repack|auto|none]

SYNTH_DIR may hold any number of layers (`synth ... --layers 2` keeps every shape, the card's vocabulary included).

SYNTH_DIR: the bf16 checkpoint (`llmpress synth deepseek-r1-distill-llama-8b --output SYNTH_DIR`); W4A16_DIR: it
compressed int4 g128, e.g. round-to-nearest (`llmpress compress SYNTH_DIR --scheme W4A16 --no-gptq ...`): decode
speed does not depend on how the int4 codes were chosen.

What it does, each engine in its own subprocess (clean resident memory), one after the other, same thread count:
- creates llama.cpp's venv if missing (`python3 -m venv`, `pip install llama-cpp-python==0.3.36 gguf`: the build
  takes ~10 min on 2 cores) and writes SYNTH_DIR's weights as a GGUF: decoder linears Q4_0 (gguf.quants), the
  embedding and lm_head bf16 as in our checkpoint, q/k rows permuted to llama.cpp's rope layout, the byte-level
  BPE tokenizer as tokenizer.ggml.* (model "gpt2", pre "llama-bpe");
- measures this machine's read bandwidth (the best of a few sums over a 2 GiB tensor on the same threads);
- ours (LLM on W4A16_DIR): load time, resident memory after load, prefill tok/s (one PROMPT-token prompt),
  single-stream decode, 4 and 16 streams; again with the int4 decode GEMM's float32 activations (the kernel
  before int4_vnni.cpp); again with `--prefill-dtype bfloat16` (prefill and one stream);
  dense bf16 (SYNTH_DIR): single-stream decode;
- llama.cpp (same GGUF weights, n_batch >= prompt): load, prefill, single-stream decode, and 4 / 16 sequences
  decoded together in one batch through llama_decode (its low-level API). Its decoder weights go to its
  CPU_REPACK buffers (Q4_0x8 AVX-512 GEMMs) by default: its AMX buffers, its own first choice where built with
  AMX, segfault in ggml_backend_amx_mul_mat on batches of 16+ tokens on this Xeon (llama.cpp issue #20824);
  `--llama-bufts auto` restores its choice, `none` is plain Q4_0;
- prints one Markdown table, the bandwidth ceiling (bytes read per token / bandwidth) and our % of it, and a JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

LLAMA_CPP = "llama-cpp-python==0.3.36"


# -- llama.cpp's venv and GGUF ---------------------------------------------------------------------

def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import llama_cpp, gguf, psutil"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"building llama.cpp into {venv} (~10 min on 2 cores)", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(["nice", str(py), "-m", "pip", "install", "-q", LLAMA_CPP, "gguf", "psutil"], check=True)
    return py


def _permute_rope(w, n_head: int):
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(cfg: dict) -> list[float]:
    """rope_freqs.weight for rope_type llama3, as convert_hf_to_gguf.py writes it."""
    rs, dim, base = cfg["rope_scaling"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"], \
        cfg.get("rope_theta", 10000.0)
    factor, lo, hi = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / dim))
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def write_gguf(src: Path, out: Path) -> None:
    """SYNTH_DIR (bf16 safetensors) -> a Q4_0 GGUF, streamed tensor by tensor (peak: one float32 weight)."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    n_head, n_kv, L = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    Q4, BF16, F32 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32

    # name in the GGUF -> (name in the checkpoint, type, rope permutation heads)
    plan = {"token_embd.weight": ("model.embed_tokens.weight", BF16, None),
            "output_norm.weight": ("model.norm.weight", F32, None),
            "output.weight": ("lm_head.weight", BF16, None)}
    for i in range(L):
        p = f"model.layers.{i}."
        for g, h, t, heads in (("attn_norm", "input_layernorm", F32, None), ("ffn_norm", "post_attention_layernorm", F32, None),
                               ("attn_q", "self_attn.q_proj", Q4, n_head), ("attn_k", "self_attn.k_proj", Q4, n_kv),
                               ("attn_v", "self_attn.v_proj", Q4, None), ("attn_output", "self_attn.o_proj", Q4, None),
                               ("ffn_gate", "mlp.gate_proj", Q4, None), ("ffn_up", "mlp.up_proj", Q4, None),
                               ("ffn_down", "mlp.down_proj", Q4, None)):
            plan[f"blk.{i}.{g}.weight"] = (p + h + ".weight", t, heads)

    files: dict[str, object] = {}

    def read(name: str) -> torch.Tensor:
        f = index[name]
        if f not in files:
            files[f] = safe_open(str(src / f), framework="pt")
        return files[f].get_tensor(name)

    def shape_of(name: str) -> list[int]:
        f = index[name]
        if f not in files:
            files[f] = safe_open(str(src / f), framework="pt")
        return list(files[f].get_slice(name).get_shape())

    w = gguf.GGUFWriter(str(out) + ".tmp", "llama")
    w.add_name("card-scale synth (random weights)")
    w.add_context_length(cfg.get("max_position_embeddings", 8192))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    # tokenizer: byte-level BPE, the added (special) tokens after the BPE vocabulary
    vocab = dict(tok["model"]["vocab"])
    special = set()
    for a in tok.get("added_tokens", []):
        vocab[a["content"]] = a["id"]
        if a.get("special"):
            special.add(a["id"])
    tokens = [f"[PAD{i}]" for i in range(cfg["vocab_size"])]
    types = [gguf.TokenType.UNUSED] * cfg["vocab_size"]
    for t, i in vocab.items():
        if i < cfg["vocab_size"]:
            tokens[i] = t
            types[i] = gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.get("bos_token_id", 0))
    w.add_eos_token_id(cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], int) else cfg["eos_token_id"][0])

    rope = None
    if (cfg.get("rope_scaling") or {}).get("rope_type") == "llama3":
        rope = np.asarray(_llama3_rope_factors(cfg), dtype=np.float32)
        w.add_tensor_info("rope_freqs.weight", rope.shape, rope.dtype, rope.nbytes)
    for g, (h, t, _) in plan.items():
        rows, cols = (shape_of(h) + [1])[:2]
        if t == Q4:
            w.add_tensor_info(g, (rows, cols // 32 * 18), np.dtype(np.uint8), rows * cols // 32 * 18, raw_dtype=Q4)
        elif t == BF16:
            w.add_tensor_info(g, (rows, cols), np.dtype(np.uint16), rows * cols * 2, raw_dtype=BF16)
        else:
            w.add_tensor_info(g, (rows,), np.dtype(np.float32), rows * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if rope is not None:
        w.write_tensor_data(rope)
    for n, (g, (h, t, heads)) in enumerate(plan.items()):
        x = read(h)
        if heads:
            x = _permute_rope(x, heads)
        if t == Q4:
            data = gguf.quants.quantize(x.float().numpy(), Q4)
        elif t == BF16:
            data = x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
        else:
            data = x.float().numpy()
        w.write_tensor_data(data)
        if n % 27 == 0:
            print(f"gguf: {n + 1}/{len(plan)} tensors", file=sys.stderr)
    w.close()
    os.replace(str(out) + ".tmp", out)


# -- measurements (each in its own subprocess) ----------------------------------------------------

def read_bandwidth(threads: int) -> float:
    """Bytes/s of a sum over a 2 GiB float32 tensor (out of cache), the best of 5."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(1 << 29)
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def ours(model: str, prompt: int, gen: int, streams: list[int], threads: int, prefill_dtype: str = "auto",
         int4_act_bits: int = 0) -> dict:
    import torch

    from llmpress.engine import LLM, SamplingParams, extension

    torch.set_num_threads(threads)
    if int4_act_bits:
        extension.set_int4_act_bits(int4_act_bits)
    t0 = time.perf_counter()
    llm = LLM(model, max_num_seqs=max(streams), max_num_batched_tokens=max(512, prompt),
              kv_cache_memory_bytes=1 << 30, prefill_dtype=prefill_dtype)
    res = {"load_s": round(time.perf_counter() - t0, 1), "rss_after_load_gb": round(_rss() / 1e9, 2)}
    eng = llm.engine
    wb = eng.model.weight_bytes()
    res["bytes_per_token"] = wb["linears"] + wb["norms"] + (wb["lm_head"] or wb["embedding"])
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(1000, 100000, (n,), generator=g).tolist()

    def run(reqs: list[list[int]], max_tokens: int) -> tuple[float, float, int]:
        """(time to every first token, decode time after it, decode tokens)."""
        for i, p in enumerate(reqs):
            eng.add_request(f"r{time.perf_counter_ns()}-{i}", p,
                            SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        seqs = [s for r in list(eng.requests.values()) for s in r]
        t = time.perf_counter()
        while any(not s.output_ids for s in seqs):
            eng.step()
        t1 = time.perf_counter()
        n0 = sum(len(s.output_ids) for s in seqs)
        while eng.has_unfinished():
            eng.step()
        return t1 - t, time.perf_counter() - t1, sum(len(s.output_ids) for s in seqs) - n0

    run([ids(16)], 4)  # warm-up
    ttft, _, _ = run([ids(prompt)], 1)
    res["prefill_tok_s"] = round(prompt / ttft, 1)
    res["decode"] = {}
    for b in streams:
        _, dt, n = run([ids(64) for _ in range(b)], gen)
        res["decode"][str(b)] = round(n / dt, 2)
    res["peak_rss_gb"] = round(_rss() / 1e9, 2)
    return res


LLAMA_CPP_SCRIPT = r'''
import json, sys, time, ctypes
import numpy as np
import psutil
import llama_cpp
path, prompt, gen, threads, streams, bufts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    [int(s) for s in sys.argv[5].split(",")], sys.argv[6]
n_ctx = max(prompt + gen + 16, max(streams) * (64 + gen) + 16)
if bufts != "auto":  # weights' buffer type: Llama() has no argument for it, so the default params are replaced
    import ctypes, pathlib
    vp = ctypes.c_void_p
    lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    ggml = ctypes.CDLL(str(lib / "libggml.so"), mode=ctypes.RTLD_GLOBAL)
    ggml.ggml_backend_dev_by_type.restype, ggml.ggml_backend_dev_by_type.argtypes = vp, [ctypes.c_int]
    base.ggml_backend_dev_backend_reg.restype, base.ggml_backend_dev_backend_reg.argtypes = vp, [vp]
    base.ggml_backend_reg_get_proc_address.restype, base.ggml_backend_reg_get_proc_address.argtypes = vp, [vp, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype, base.ggml_backend_buft_name.argtypes = ctypes.c_char_p, [vp]
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    get = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(base.ggml_backend_reg_get_proc_address(
        base.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts"))
    arr, extra = get(dev), {}
    for i in range(16):
        if not arr[i]:
            break
        extra[base.ggml_backend_buft_name(arr[i]).decode()] = arr[i]
    class Override(ctypes.Structure):  # llama_model_tensor_buft_override
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", vp)]
    pattern = rb"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight"
    overrides = (Override * 2)(Override(pattern, extra["CPU_REPACK"]), Override(None, None))
    _default = llama_cpp.llama_cpp.llama_model_default_params
    def _params():
        p = _default()
        p.use_extra_bufts = False
        if bufts == "repack":
            p.tensor_buft_overrides = ctypes.cast(overrides, vp)
        return p
    llama_cpp.llama_cpp.llama_model_default_params = _params
t0 = time.perf_counter()
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=max(512, prompt), n_ubatch=max(512, prompt), n_threads=threads,
                      n_threads_batch=threads, verbose=False)
res = {"load_s": round(time.perf_counter() - t0, 1), "rss_after_load_gb": round(psutil.Process().memory_info().rss / 1e9, 2)}
rng = np.random.default_rng(0)
ids = lambda n: rng.integers(1000, 100000, n).tolist()
llm.eval(ids(16))  # warm-up
llm.reset()
t = time.perf_counter(); llm.eval(ids(prompt)); res["prefill_tok_s"] = round(prompt / (time.perf_counter() - t), 1)
llm.reset(); llm.eval(ids(64))
tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t = time.perf_counter()
for _ in range(gen):
    llm.eval([tok]); tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
res["decode"] = {"1": round(gen / (time.perf_counter() - t), 2)}
# batched: b sequences in one llama_decode per step (its low-level API), greedy, after a joint prefill
# Llama(...) leaves n_seq_max at 1 in this version, so the batched runs get a context of their own
n_vocab = llm.n_vocab()
cp = llama_cpp.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, max(512, max(streams) * 64), max(512, max(streams) * 64), max(streams)
cp.n_threads = cp.n_threads_batch = threads
ctx = llama_cpp.llama_init_from_model(llm.model, cp)
mem = llama_cpp.llama_get_memory(ctx)
for b in [s for s in streams if s > 1]:
    llama_cpp.llama_memory_clear(mem, True)
    batch = llama_cpp.llama_batch_init(max(512, b * 64), 0, b)
    def submit(items):  # items: (token, pos, seq, want_logits)
        batch.n_tokens = len(items)
        for k, (tk, pos, s, lg) in enumerate(items):
            batch.token[k] = tk; batch.pos[k] = pos; batch.n_seq_id[k] = 1; batch.seq_id[k][0] = s; batch.logits[k] = lg
        assert llama_cpp.llama_decode(ctx, batch) == 0
    for s in range(b):  # prefill each sequence's 64 tokens
        p = ids(64); submit([(tk, i, s, i == 63) for i, tk in enumerate(p)])
    toks = [1000 + s for s in range(b)]
    t = time.perf_counter()
    for step in range(gen):
        submit([(toks[s], 64 + step, s, True) for s in range(b)])
        for s in range(b):
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, s), shape=(n_vocab,))
            toks[s] = int(np.argmax(row))
    res["decode"][str(b)] = round(b * gen / (time.perf_counter() - t), 2)
    llama_cpp.llama_batch_free(batch)
res["peak_rss_gb"] = round(psutil.Process().memory_info().rss / 1e9, 2)
print(json.dumps(res))
'''


def _sub(cmd: list[str], env: dict | None = None) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"{' '.join(cmd[:2])} ...: failed (exit {p.returncode})\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("synth")
    ap.add_argument("w4a16")
    ap.add_argument("--gguf", help="Q4_0 GGUF of SYNTH (written when missing; default: SYNTH-q4_0.gguf)")
    ap.add_argument("--venv", default="/work/venvs/llamacpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense bf16 decode (16 GB resident)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--llama-bufts", choices=["repack", "auto", "none"], default="repack",
                    help="llama.cpp's weight buffers: its Q4_0x8 repacked AVX-512 GEMMs (default); auto: its own choice, "
                         "AMX where built with it, which segfaulted on batches of 16+ tokens here (llama.cpp issue "
                         "#20824); none: plain Q4_0")
    ap.add_argument("--no-bf16-prefill", action="store_true", help="skip our W4A16 row with --prefill-dtype bfloat16")
    ap.add_argument("--no-f32-act", action="store_true",
                    help="skip our W4A16 row with the float32-activation int4 decode kernel (the int16 one's baseline)")
    ap.add_argument("--prefill-dtype", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--int4-act-bits", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    streams = [int(s) for s in a.streams.split(",")]
    if a.one:
        kind, model = a.one
        out = read_bandwidth(a.threads) if kind == "bandwidth" else ours(model, a.prompt, a.gen, streams, a.threads,
                                                                                  a.prefill_dtype, a.int4_act_bits)
        print(json.dumps(out))
        return
    synth, w4 = Path(a.synth), Path(a.w4a16)
    for p in (synth, w4):
        if not (p / "config.json").is_file():
            sys.exit(f"{p}: not a checkpoint folder (no config.json)")
    gguf_path = Path(a.gguf or f"{synth.resolve()}-q4_0.gguf")
    py = None
    if not a.no_llama_cpp:
        py = ensure_venv(Path(a.venv))
        if not gguf_path.exists():
            write_gguf(synth, gguf_path)
    me = [sys.executable, __file__, "x", "y", "--threads", str(a.threads), "--prompt", str(a.prompt), "--gen",
          str(a.gen), "--streams", a.streams]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    rows: dict[str, dict] = {}
    bw = _sub(me + ["--one", "bandwidth", "-"], env)
    rows["ours W4A16"] = _sub(me + ["--one", "ours", str(w4)], env)
    if not a.no_f32_act:  # the same weights, the int4 decode GEMM with float32 activations (exact, slower)
        rows["ours W4A16, float32-act decode"] = _sub(me + ["--int4-act-bits", "32", "--one", "ours", str(w4)], env)
    if not a.no_bf16_prefill:  # the same weights, prefill GEMMs in bf16 (llama.cpp's run in int8 x Q8_0)
        rows["ours W4A16, bf16 prefill"] = _sub(me[:-2] + ["--streams", "1", "--prefill-dtype", "bfloat16", "--one",
                                                            "ours", str(w4)], env)
    if py:
        rows["llama.cpp Q4_0"] = _sub([str(py), "-c", LLAMA_CPP_SCRIPT, str(gguf_path), str(a.prompt), str(a.gen),
                                       str(a.threads), a.streams, a.llama_bufts], env)
    if not a.no_dense:
        rows["ours dense bf16"] = _sub(me[:-2] + ["--streams", "1", "--one", "ours", str(synth)], env)
    w4_bytes = _dir_bytes(w4)
    size = {"ours W4A16": w4_bytes, "ours W4A16, float32-act decode": w4_bytes, "ours W4A16, bf16 prefill": w4_bytes,
            "ours dense bf16": _dir_bytes(synth),
            "llama.cpp Q4_0": gguf_path.stat().st_size if gguf_path.exists() else 0}
    if "llama.cpp Q4_0" in rows:  # a token reads everything but the embedding (bf16 [vocab, hidden])
        cfg = json.loads((synth / "config.json").read_text())
        rows["llama.cpp Q4_0"]["bytes_per_token"] = size["llama.cpp Q4_0"] - cfg["vocab_size"] * cfg["hidden_size"] * 2
    load = os.getloadavg()
    print(f"\n{a.threads} threads, prompt {a.prompt} tokens (prefill), decode {a.gen} tokens after a 64-token prompt, "
          f"greedy; read bandwidth {bw / 1e9:.1f} GB/s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| engine | weights GB | load s | RSS after load GB | prefill tok/s | " +
          " | ".join(f"decode @{s}" for s in streams) + " | ceiling @1 tok/s | % of ceiling |")
    print("|---" * (6 + len(streams) + 1) + "|")
    for name, r in rows.items():
        bpt = r.get("bytes_per_token")
        ceil = bw / bpt if bpt else None
        dec = " | ".join(str(r["decode"].get(str(s), "-")) for s in streams)
        pct = f"{100 * r['decode']['1'] / ceil:.0f}%" if ceil else "-"
        print(f"| {name} | {size[name] / 1e9:.2f} | {r['load_s']} | {r['rss_after_load_gb']} | {r['prefill_tok_s']} | "
              f"{dec} | {f'{ceil:.2f}' if ceil else '-'} | {pct} |")
    print(json.dumps({"read_bandwidth_gb_s": round(bw / 1e9, 2), "loadavg": load, "sizes": size, "rows": rows}))


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.glob("*.safetensors"))


if __name__ == "__main__":
    main()
