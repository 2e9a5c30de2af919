"""The server under load and misuse: continuous batching across HTTP requests, clients
that leave mid-stream, an engine failure mid-stream, metrics that count what was sent,
API keys, the queue bound, and a fuzz of malformed bodies."""
from __future__ import annotations

import asyncio
import json
import random
import re
import time

import httpx
import openai
import pytest

from llmpress.engine import EngineConfig, LLMEngine

MODEL = "tiny-llama"  # the served name conftest gives the tiny model
LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 480, "temperature": 0, "ignore_eos": True}


def metrics(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[re.sub(r'model_name="[^"]*",?', "", name).replace("{}", "")] = float(value)
    return out


def wait_free(server, timeout: float = 10) -> float:
    """Seconds until every KV block is free again and no request is left in the engine."""
    e, t0 = server.engine, time.monotonic()
    while e.has_unfinished() or e.blocks.num_free != e.blocks.num_blocks:
        assert time.monotonic() - t0 < timeout, f"{e.blocks.num_free}/{e.blocks.num_blocks} blocks free"
        time.sleep(0.005)
    return time.monotonic() - t0


def test_concurrent_streams_are_batched_and_equal_sequential(idle):
    prompts = ["Hello there", "1, 2, 3, 4,", "Why is the sky blue? Because", "word " * 40, "Tell me a story", "abc"]
    client = idle.openai()
    kw = dict(model=MODEL, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    sequential = [client.completions.create(prompt=p, **kw).choices[0].text for p in prompts]

    async def one(aclient, p: str) -> str:
        stream = await aclient.completions.create(prompt=p, stream=True, **kw)
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def all_at_once() -> list[str]:
        async with idle.async_openai() as aclient:
            return await asyncio.gather(*(one(aclient, p) for p in prompts))

    steps = idle.engine.stats["steps"]
    assert asyncio.run(all_at_once()) == sequential
    # one at a time would take >= 16 steps each; batched, they share steps
    assert idle.engine.stats["steps"] - steps < 0.6 * 16 * len(prompts)


def test_disconnect_mid_stream_frees_kv_at_once(idle):
    e = idle.engine
    aborted = metrics(idle)['vllm:request_success_total{finished_reason="abort"}']
    with httpx.stream("POST", f"{idle.url}/v1/completions", json={**LONG, "stream": True}, timeout=30) as r:
        lines = r.iter_lines()  # kept referenced: closing this generator would close the connection
        for _ in range(3):
            next(line for line in lines if line.startswith("data: "))
        assert e.has_unfinished() and e.blocks.num_free < e.blocks.num_blocks
    # leaving the `with` closes the connection, 480 tokens before the end
    assert wait_free(idle) < 2
    assert metrics(idle)['vllm:request_success_total{finished_reason="abort"}'] == aborted + 1


def test_disconnect_while_waiting_for_a_full_response(idle):
    aborted = metrics(idle)['vllm:request_success_total{finished_reason="abort"}']
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{idle.url}/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=0.3))
    wait_free(idle)
    assert metrics(idle)['vllm:request_success_total{finished_reason="abort"}'] == aborted + 1


def test_metrics_count_what_was_sent(idle):
    before = metrics(idle)
    client = idle.openai()
    usages = [client.completions.create(model=MODEL, prompt=p, max_tokens=k, temperature=0, extra_body={"ignore_eos": True}).usage
              for p, k in (("Hello", 3), ("The quick brown fox", 5))]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    usages.append([c for c in stream][-1].usage)
    after = metrics(idle)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["vllm:prompt_tokens_total"] == sum(u.prompt_tokens for u in usages)
    assert delta["vllm:generation_tokens_total"] == sum(u.completion_tokens for u in usages) == 12
    assert delta['vllm:request_success_total{finished_reason="length"}'] == 3
    for h in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds", "vllm:request_prompt_tokens"):
        assert delta[f"{h}_count"] == 3 and after[f'{h}_bucket{{le="+Inf"}}'] == after[f"{h}_count"]
    assert delta["vllm:inter_token_latency_seconds_count"] == 12 - 3  # every token after each first one
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0


def test_engine_error_mid_stream_is_an_sse_error_then_done(idle, monkeypatch):
    real, calls = idle.engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated kernel failure")
        return real()

    monkeypatch.setattr(idle.engine, "step", failing_step)
    with httpx.stream("POST", f"{idle.url}/v1/completions", json={**LONG, "max_tokens": 50, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == 500 and "simulated kernel failure" in err["message"]
    assert all("choices" in json.loads(e) for e in events[:-2])
    monkeypatch.undo()
    wait_free(idle)
    # the server goes on serving
    assert idle.openai().completions.create(model=MODEL, prompt="hi", max_tokens=3).usage.completion_tokens >= 1


def test_api_key_and_queue_bound(tiny_llama, start_server):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), kv_cache_memory_bytes=16 << 20, max_model_len=512, max_num_seqs=1))
    with start_server(engine, api_key="sekret", max_queue=0) as s:
        url = f"{s.url}/v1/completions"
        assert httpx.post(url, json={"prompt": "hi"}).status_code == 401
        wrong = httpx.post(url, content=b"{not json", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "AuthenticationError"  # before parsing
        with pytest.raises(openai.AuthenticationError):
            s.openai(api_key="nope").models.list()
        assert httpx.get(f"{s.url}/health").status_code == 200 and httpx.get(f"{s.url}/metrics").status_code == 200
        ok = s.openai(api_key="sekret")
        assert ok.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices

        # capacity = max_num_seqs + max_queue = 1: a second request while one streams is a 503
        auth = {"Authorization": "Bearer sekret"}
        with httpx.stream("POST", url, json={**LONG, "stream": True}, headers=auth, timeout=30) as r:
            lines = r.iter_lines()  # kept referenced: the connection stays open
            next(line for line in lines if line.startswith("data: "))
            busy = httpx.post(url, json={"prompt": "hi", "max_tokens": 2}, headers=auth)
            assert busy.status_code == 503 and busy.json()["error"]["type"] == "ServiceUnavailableError"
        wait_free(s)
        assert ok.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices


def _fuzz_bodies(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    nasty = [None, True, False, -1, 0, 1, 3, 2**63, -(2**64), 1e308, -1e308, 1e-320, 0.5, "", "x" * 50, "\ud800",
             [], {}, [1, "a"], [[]], [[-1]], [[10**12]], [1.5], {"a": 1}, [None], "NaN"]
    small = [1, 2, 3]
    pools = {
        "prompt": ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]], "", [], [[]], [10**9], 5, None, {"x": 1}, "é" * 30],
        "max_tokens": small * 4 + [0, -1, 10**12, "3", 2.5],  # None (= the whole context) is slow here
        "messages": [[{"role": "user", "content": "hi"}], [], [{"role": 1}], [{"content": "x"}], "hi",
                     [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}],
                     [{"role": "system", "content": None}, {"role": "user", "content": "q"}], [{"role": "tool", "content": "x"}]],
    }
    fields = ["temperature", "top_p", "top_k", "min_p", "n", "seed", "stop", "stop_token_ids", "logprobs", "echo",
              "stream", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "ignore_eos",
              "best_of", "top_logprobs", "logit_bias", "stream_options", "model", "max_completion_tokens",
              "include_stop_str_in_output", "skip_special_tokens", "add_generation_prompt", "unknown_extra"]
    out = []
    for i in range(n):
        path = rng.choice(["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
        if i % 10 == 0:  # not JSON objects at all
            raw = rng.choice([b"", b"{", b"[]", b"null", b"{\"prompt\": NaN}", b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                              b'{"prompt": "hi", "max_tokens": 1e999}', bytes(rng.randrange(256) for _ in range(40))])
            out.append((path, raw))
            continue
        body = {"prompt" if "chat" not in path else "messages": rng.choice(pools["prompt" if "chat" not in path else "messages"]),
                "max_tokens": rng.choice(pools["max_tokens"])}
        if path == "/detokenize":
            body = {"tokens": rng.choice([[1, 2], [-1], [10**10], "x", [], [1.5]])}
        for f in rng.sample(fields, rng.randrange(0, 6)):
            body[f] = rng.choice(nasty + small)
        out.append((path, json.dumps(body).encode()))
    return out


def test_fuzz_no_5xx_no_hang(idle):
    rng = random.Random(0)
    bodies = _fuzz_bodies(rng, 1000)
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=idle.url, timeout=30) as client:
        for path, raw in bodies:
            r = client.post(path, content=raw, headers={"content-type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, raw[:300], r.text[:300])
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert statuses.get(200, 0) > 50 and statuses.get(400, 0) > 300, statuses
    wait_free(idle)
    assert idle.openai().completions.create(model=MODEL, prompt="still alive", max_tokens=2).choices
