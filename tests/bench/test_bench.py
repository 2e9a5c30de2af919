"""bench: exact prompt lengths, usage counts that match the client's, errors counted and
reported, dead targets failing fast, and the cards' cost arithmetic."""
from __future__ import annotations

import json

import pytest
import torch

from llmpress.bench.cost import CARD_MULTI, cost_reduction, derive_prices, qpd_single
from llmpress.bench.load import BenchTargetError, check_target
from llmpress.bench.workload import CARD_PROFILES, PromptMaker, WorkloadError, parse_profiles


@pytest.fixture(scope="module")
def maker(default_model):
    from transformers import AutoTokenizer

    return PromptMaker(AutoTokenizer.from_pretrained(default_model))


@pytest.mark.parametrize("n", [1, 2, 17, 128, 256, 1000, 4096, 10240])
def test_prompts_have_exact_token_counts(maker, n):
    texts = {maker.make(n, i) for i in range(3)}
    assert len(texts) == 3  # different cuts of the text
    assert all(maker.count(t) == n for t in texts)


def test_profiles_parse_and_scale():
    assert [p.label for p in parse_profiles(None)] == [p.label for p in CARD_PROFILES]
    ps = parse_profiles("256/128, 10240/1536,7/3")
    assert ps[0].name == "Instruction Following" and ps[1].name == "Large RAG" and ps[2].name == "custom 7/3"
    assert ps[1].scaled(0.25).label == "2560/384"
    for bad in ("256", "a/b", "0/5"):
        with pytest.raises(WorkloadError):
            parse_profiles(bad)


def test_card_prices_and_cost_reduction():
    prices = derive_prices()
    for gpu, p in prices.items():  # every card row implies the same price within the cards' rounding
        assert p["multi_max"] / p["multi_min"] < 1.06 and p["single_max"] / p["single_min"] < 1.06, gpu
        assert p["multi_min"] <= p["usd_per_hour"] <= p["multi_max"]
    assert len(CARD_MULTI["H100"]) == 7
    # the W4A16 card, A6000 single-stream: average cost reduction 2.35
    base = [1511, 755, 1483, 1462, 191, 188, 353, 110]
    w4 = [3870, 1918, 3492, 3335, 492, 472, 771, 198]
    assert cost_reduction(w4, base) == pytest.approx(2.35, abs=0.005)
    assert qpd_single(3.0, prices["A6000"]["usd_per_hour"]) == pytest.approx(1511, rel=0.01)


def test_dead_target_fails_fast():
    with pytest.raises(BenchTargetError, match="no OpenAI-compatible server"):
        check_target("http://127.0.0.1:9/v1", timeout=2)


def test_bench_end_to_end_usage_and_errors(tiny_llama, tmp_path, monkeypatch):
    """Launch the real server; the server's usage numbers equal what the client asked for;
    a profile longer than the server's context is counted as errors, not dropped."""
    from llmpress.bench.run import BenchConfig, run

    monkeypatch.setenv("LLMPRESS_CACHE", str(tmp_path / "cache"))
    # max_seconds far above what 9 requests take: each setting ends at max_requests, and on a loaded host
    # (a CI run beside a 2-core compress) a 30 s window once counted none of them
    cfg = BenchConfig(launch=str(tiny_llama), base=str(tiny_llama), profiles="48/12,1100/8", mode="throughput", concurrency=3,
                      max_seconds=300, max_requests=9, sync_requests=2, cost_per_hour=1.0, max_model_len=None)
    out = run(cfg, tmp_path / "b", progress=False)
    good = out["models"]["model"]["profiles"]["48/12"]["runs"]
    for r in good.values():
        assert r["errors"] == 0 and r["prompt_tokens"] == [48] and r["output_tokens"] == [12]
    assert good["throughput@3"]["requests"] == 9
    bad = out["models"]["model"]["profiles"]["1100/8"]
    assert bad["errors"] >= 9 and all("HTTP 400" in m for r in bad["runs"].values() for m in r["error_messages"])
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "Single-stream performance" in md and "Multi-stream performance" in md
    data = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert {"latency.png", "throughput.png"} <= set(data["plots"])
    again = run(cfg, tmp_path / "b2", progress=False)  # the base comes from the cache
    assert again["models"]["base"].get("cached") is True


def _served_prompt_logprobs(url: str, ids: list[int]) -> torch.Tensor:
    import httpx

    model = httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"]
    r = httpx.post(f"{url}/completions", json={"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0,
                                               "prompt_logprobs": 0}, timeout=120)
    r.raise_for_status()
    steps = r.json()["choices"][0]["prompt_logprobs"]
    return torch.tensor([steps[p][str(ids[p])]["logprob"] for p in range(1, len(ids))])


def test_launched_server_runs_the_dtypes_asked_for(tiny_llama):
    """bench --prefill-dtype reaches the server it launches: the served prompt logprobs are the in-process
    engine's with that prefill dtype, and differ from the float32 ones by bf16's rounding."""
    from llmpress.bench.run import Server
    from llmpress.engine import LLM, SamplingParams

    ids = torch.randint(10, 1000, (300,), generator=torch.Generator().manual_seed(5)).tolist()  # M = 300: past the fused paths

    def local(prefill_dtype: str) -> torch.Tensor:
        llm = LLM(str(tiny_llama), prefill_dtype=prefill_dtype, kv_cache_memory_bytes=32 << 20)
        out = llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False)[0]
        return torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))])

    with Server(str(tiny_llama), "embedded", None, 1, prefill_dtype="bfloat16") as srv:
        served = _served_prompt_logprobs(srv.url, ids)
    bf16, f32 = local("bfloat16"), local("float32")
    assert (served - bf16).abs().max() < 1e-4
    assert (served - f32).abs().max() > 1e-3  # so the first check could tell the two apart


def test_dtypes_need_a_launched_server():
    from llmpress.bench.run import BenchConfig

    with pytest.raises(WorkloadError, match="--prefill-dtype bfloat16: sets the servers bench launches"):
        BenchConfig(target="http://127.0.0.1:9/v1", prefill_dtype="bfloat16")
    with pytest.raises(WorkloadError, match="an embedded-engine CPU setting"):
        BenchConfig(launch="m", engine="vllm", prefill_dtype="bfloat16")
    with pytest.raises(WorkloadError, match="'float16' is not auto, float32 or bfloat16"):
        BenchConfig(launch="m", dtype="float16")
