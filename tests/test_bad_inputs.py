"""Bad inputs across the verbs: each gets one line on stderr naming the value and the fix, exit code 2,
never a traceback, and no work or output before the check. One row per input: the argv (with {tiny},
{trunc}, {empty}, {badcfg}, {tmp} filled in) and the words the line must hold."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from llmpress.cli import main


@pytest.fixture(scope="module")
def broken(tiny_llama, tmp_path_factory):
    """A truncated, an empty .safetensors, and a config.json that is not JSON, beside copies of tiny_llama."""
    root = tmp_path_factory.mktemp("broken")
    out = {}
    for name in ("trunc", "empty", "badcfg"):
        out[name] = shutil.copytree(tiny_llama, root / name)
    w = out["trunc"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    (out["empty"] / "model.safetensors").write_bytes(b"")
    (out["badcfg"] / "config.json").write_text('{"hidden_size": 128,')
    return out


CASES = [
    # model folders cut short or corrupt, every verb that loads one
    ("compress {trunc} --group-size 64 --output {tmp}/o", ["model.safetensors", "cut short", "again"]),
    ("ppl {trunc}", ["model.safetensors", "cut short"]),
    ("generate {trunc} hi", ["model.safetensors", "cut short"]),
    ("serve {trunc}", ["model.safetensors", "cut short"]),
    ("compress {empty} --group-size 64 --output {tmp}/o", ["model.safetensors", "0 bytes"]),
    ("generate {empty} hi", ["model.safetensors", "0 bytes"]),
    ("compress {badcfg} --group-size 64 --output {tmp}/o", ["config.json", "not valid JSON"]),
    ("ppl {badcfg}", ["config.json", "not valid JSON"]),
    ("generate {badcfg} hi", ["config.json", "not valid JSON"]),
    ("serve {badcfg}", ["config.json", "not valid JSON"]),
    # options out of range, or that the scheme would ignore
    ("ppl {tiny} --window 0", ["--window 0", "at least 2"]),
    ("ppl {tiny} --max-tokens -5", ["--max-tokens -5", ">= 0"]),
    ("generate {tiny} hi --max-model-len 20000", ["max_model_len=20000", "max_position_embeddings=1024",
                                                  "LLMPRESS_ALLOW_LONG_MAX_MODEL_LEN"]),
    ("generate {tiny} hi --max-model-len 0", ["max_model_len=0", "positive"]),
    ("compress {tiny} --scheme W8A8 --group-size 64 --output {tmp}/o", ["group_size", "W8A8", "per channel"]),
    ("compress {tiny} --scheme FP8_DYNAMIC --smoothing-strength 0.5 --output {tmp}/o", ["smoothing_strength", "FP8_DYNAMIC"]),
    ("compress {tiny} --scheme FP8_DYNAMIC --num-samples 8 --output {tmp}/o", ["num_samples", "no calibration data", "--gptq"]),
    ("compress {tiny} --scheme FP8_DYNAMIC --dampening-frac 0.2 --output {tmp}/o", ["dampening_frac", "GPTQ"]),
    ("compress {tiny} --scheme W8A8 --algorithm awq --output {tmp}/o", ["algorithm awq", "W8A8", "weight-only"]),
    ("compress {tiny} --algorithm awq+gptq --no-gptq --output {tmp}/o", ["contradicts", "--no-gptq"]),
    ("compress {tiny} --scheme FP8_DYNAMIC --no-actorder --output {tmp}/o", ["actorder", "GPTQ"]),
    ("compress {tiny} --scheme W8A8 --budget 6 --output {tmp}/o", ["budget 6.0", "W8A8", "--scheme W4A16"]),
    ("compress {tiny} --group-size 64 --budget 4 --output {tmp}/o", ["budget 4.0", "[4.25, 16)", "--budget 4.625"]),
    ("compress {tiny} --scheme W4A16_ASYM --group-size 64 --budget 5 --output {tmp}/o", ["budget 5.0", "W4A16_ASYM",
                                                                                         "--scheme W4A16"]),
    # vLLM's serve flags that the embedded engine cannot honour
    ("serve {tiny} --tensor-parallel-size 2", ["--tensor-parallel-size 2", "one device", "--engine vllm"]),
    ("serve {tiny} --gpu-memory-utilization 0.9", ["--gpu-memory-utilization", "--kv-cache-memory-bytes"]),
    ("serve {tiny} --enable-prefix-caching", ["--enable-prefix-caching", "no prefix cache"]),
    ("serve {tiny} --trust-remote-code", ["--trust-remote-code", "no model code"]),
    ("serve {tiny} --quantization awq", ["--quantization awq", "compressed-tensors"]),
    ("serve {tiny} --chat-template {tmp}/nope.jinja", ["nope.jinja", "no such file"]),
    ("serve {tiny} --engine vllm --prefill-dtype bfloat16", ["--prefill-dtype bfloat16", "vLLM", "leave --prefill-dtype out"]),
    # every task name checked before any work
    ("eval {tiny} --tasks mmlu,arcc --output {tmp}/o", ["unknown task 'arcc'", "mmlu,gsm,bbh,humaneval,ppl"]),
    # more bad inputs across the verbs (the siblings); {tmp} holds empty.jsonl, bin.txt, a file named
    # notadir and bad.yaml (see _files)
    ("compress {tiny} --group-size 64 --dataset {tmp}/empty.jsonl --output {tmp}/o", ["empty.jsonl", "no usable conversations"]),
    ("compress {tiny} --group-size 64 --ignore re:[ --output {tmp}/o", ["bad regular expression", "re:["]),
    ("compress {tiny} --group-size 64 --output {tmp}/notadir --overwrite", ["notadir", "not a folder"]),
    ("compress {tiny} --group-size 64 --output /proc/llmpress-nope/o", ["cannot write output", "--output"]),
    ("compress {tiny} --group-size 64 --device cuda --output {tmp}/o", ["no CUDA GPU", "--device cpu"]),
    ("compress {tiny} --group-size 64 --max-seq-len 4 --output {tmp}/o", ["max_seq_len", ">= 8"]),
    ("compress {tiny} --recipe {tmp}/nope.yaml --output {tmp}/o", ["nope.yaml", "not found"]),
    ("compress {tiny} --recipe {tmp}/bad.yaml --output {tmp}/o", ["bad.yaml:2", "not valid YAML"]),
    ("ppl {tiny} --text {tmp}/nope.txt", ["nope.txt", "not found"]),
    ("ppl {tiny} --text {tmp}/bin.txt", ["bin.txt", "binary"]),
    ("ppl {tiny} --base /nope/model", ["/nope/model", "no such folder"]),
    ("generate {tiny} hi --temperature -1", ["temperature=-1.0", ">= 0"]),
    ("generate {tiny} hi --max-tokens 0", ["max_tokens=0", "positive"]),
    ("generate {tiny} hi --dtype float8", ["dtype='float8'", "bfloat16"]),
    ("generate {tiny} hi --device cuda", ["no CUDA GPU", "cpu"]),
    ("generate {tiny} hi --kv-cache-memory-bytes 10", ["KV cache budget 10 bytes"]),
    ("generate {tiny} hi --max-num-seqs 0", ["--max-num-seqs 0", "at least 1"]),
    ("generate {tiny} hi --top-k -5", ["top_k=-5"]),
    ("generate {tmp} hi", ["not a Hugging Face folder", "config.json"]),
    ("chat {tiny} --max-model-len 0", ["max_model_len=0", "positive"]),
    ("serve {tiny} --port 99999", ["--port 99999", "1..65535"]),
    ("serve {tiny} --kv-cache-memory-bytes 1", ["KV cache budget 1 bytes"]),
    ("serve {tiny} --max-queue -1", ["--max-queue=-1", ">= 0"]),
    ("serve {tiny} --max-num-seqs 0", ["--max-num-seqs 0", "at least 1"]),
    ("eval {tiny} --limit 0 --output {tmp}/o", ["limit", "positive", "0"]),
    ("eval {tiny} --batch-size 0 --output {tmp}/o", ["batch_size", "positive"]),
    ("eval {tiny} --backend openai --output {tmp}/o", ["--backend openai needs --base-url"]),
    ("eval {tiny} --num-fewshot -1 --output {tmp}/o", ["num_fewshot", ">= 0"]),
    ("eval {tiny} --tasks mmlu --limit mmlu=x --output {tmp}/o", ["--limit 'mmlu=x'", "mmlu=500"]),
    ("eval {tiny} --base /nope/model --output {tmp}/o", ["/nope/model", "no such folder"]),
    ("bench --launch {tiny} --profiles 10x --output {tmp}/o", ["'10x'", "256/128"]),
    ("bench --launch {tiny} --scale 0 --output {tmp}/o", ["scale", "positive"]),
    ("bench --launch {tiny} --mode constant --rate -1 --output {tmp}/o", ["--rate -1.0", "positive"]),
    ("bench --launch {tiny} --concurrency 0 --output {tmp}/o", ["--concurrency 0", "positive"]),
    ("bench --launch {tiny} --max-seconds 0 --output {tmp}/o", ["--max-seconds 0.0", "positive"]),
    ("bench --target http://127.0.0.1:1/v1 --output {tmp}/o", ["no OpenAI-compatible server", "--launch"]),
    ("run {tmp}/nope.yaml", ["nope.yaml", "not found"]),
    ("run {tmp}/bad.yaml", ["bad.yaml:2", "not valid YAML"]),
    ("card {tmp}", ["not an llmpress run folder"]),
]
CASES_RUN_RECIPES = [
    ("model: {tiny}\nschemes:\n  - scheme: W4A16\n    group_size: 96\n", "r.yaml:4", "group_size 96 does not divide"),
]


@pytest.mark.parametrize("argv,words", CASES, ids=[c[0].split(" {tmp}")[0] for c in CASES])
def test_bad_input_one_line(capsys, broken, tiny_llama, tmp_path, argv, words):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    _files(tmp_path)
    args = [a.format(tiny=tiny_llama, tmp=tmp_path, **broken) for a in argv.split(" ")]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "o").exists()


def _files(tmp):
    (tmp / "empty.jsonl").write_text("")
    (tmp / "bin.txt").write_bytes(b"\x00\x01\x02 binary")
    (tmp / "notadir").write_text("a file")
    (tmp / "bad.yaml").write_text("scheme: [W4A16\n")


def test_cut_short_weights_through_a_subprocess(broken):
    p = subprocess.run([sys.executable, "-m", "llmpress.cli", "generate", str(broken["trunc"]), "hi"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and str(broken["trunc"]) in p.stderr, p.stderr


def test_run_recipe_that_cannot_run_leaves_no_folder(tiny_llama, tmp_path):
    """group_size against the model's widths is checked at load, with the line, before the run folder exists."""
    (tmp_path / "r.yaml").write_text(CASES_RUN_RECIPES[0][0].format(tiny=tiny_llama))
    p = subprocess.run([sys.executable, "-m", "llmpress.cli", "run", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert CASES_RUN_RECIPES[0][1] in p.stderr and CASES_RUN_RECIPES[0][2] in p.stderr
    assert not (tmp_path / "run").exists()


def test_generate_without_a_prompt_is_an_error(tmp_path):
    """`generate --max-tokens 4 default` took "default" as the prompt of the default model."""
    p = subprocess.run([sys.executable, "-m", "llmpress.cli", "generate", "--max-tokens", "4", "default"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "required: prompt" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_vllm_flags_pass_through_unchanged():
    from pathlib import Path

    from llmpress.serve.launch import ServeOptions, vllm_argv

    argv = vllm_argv(ServeOptions(tensor_parallel_size=2, gpu_memory_utilization=0.85, chat_template="t.jinja", seed=7,
                                  enable_prefix_caching=False, trust_remote_code=True, quantization="fp8",
                                  max_num_batched_tokens=4096), Path("/m"))
    joined = " ".join(argv)
    for flag in ("--tensor-parallel-size 2", "--gpu-memory-utilization 0.85", "--chat-template t.jinja", "--seed 7",
                 "--no-enable-prefix-caching", "--trust-remote-code", "--quantization fp8", "--max-num-batched-tokens 4096"):
        assert flag in joined, (flag, joined)
    assert argv[-3] == "--served-model-name"  # nargs="+" stays last


@pytest.mark.parametrize("verb", ["run", "eval"])
def test_bbh_without_its_data_stops_before_work(verb, tiny_llama, tmp_path):
    """BBH's BIG-bench sdist is fetched, not installed: where pip cannot get it (no index here), `run` and
    `eval` say so in one line before any stage runs or any folder is written, not after compressing."""
    env = {**os.environ, "LLMPRESS_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}
    if verb == "run":
        (tmp_path / "r.yaml").write_text(f"model: {tiny_llama}\nschemes: [W4A16]\ncompress:\n  num_samples: 4\n"
                                         "eval:\n  tasks: [ppl, bbh]\n")
        argv = ["run", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "out")]
    else:
        argv = ["eval", str(tiny_llama), "--tasks", "ppl,bbh", "--output", str(tmp_path / "out")]
    p = subprocess.run([sys.executable, "-m", "llmpress.cli", *argv], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "bigbench 1.0.0 sdist" in p.stderr and "leave bbh out" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()
