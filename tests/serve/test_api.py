"""The OpenAI surface, driven with the openai SDK and raw HTTP against the real server:
answers equal the engine's own, streaming equals non-streaming, the shapes are what
OpenAI clients and lm-eval parse, and bad input is a 400/404 in OpenAI's error shape."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from llmpress.engine import SamplingParams

MODEL = "tiny-llama"  # the served name conftest gives the tiny model
GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})
PROMPT = "The quick brown fox jumps over"


def _greedy(ref, prompt, n_tokens: int, **kw):
    return ref.generate(prompt, SamplingParams(temperature=0, max_tokens=n_tokens, ignore_eos=True, **kw), use_tqdm=False)[0]


def _sse(lines) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def test_models_and_health(idle):
    assert httpx.get(f"{idle.url}/health").status_code == 200
    models = idle.openai().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_model_len"] == 512


def test_completion_equals_engine_and_stream_equals_full(idle, ref):
    want = _greedy(ref, PROMPT, 12)
    client = idle.openai()
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, **GREEDY)
    assert full.choices[0].text == want.outputs[0].text and full.choices[0].finish_reason == "length"
    assert (full.usage.prompt_tokens, full.usage.completion_tokens) == (len(want.prompt_token_ids), 12)

    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) > 1  # really streamed, token by token
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12

    # token ids and lists of prompts: one choice per prompt, index = prompt position
    ids = want.prompt_token_ids
    many = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=12, **GREEDY)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == full.choices[0].text
    assert many.choices[1].text == _greedy(ref, {"prompt_token_ids": ids[:3]}, 12).outputs[0].text


def test_chat_equals_engine_with_role_first_stream(idle, ref):
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    want = ref.chat(messages, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)[0]
    client = idle.openai()
    full = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10, **GREEDY)
    assert full.choices[0].message.content == want.outputs[0].text
    assert full.choices[0].message.role == "assistant"
    assert full.usage.prompt_tokens == len(want.prompt_token_ids)

    # list-of-parts content renders the same prompt
    parts = [{"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]}]
    same = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=10, **GREEDY)
    assert same.choices[0].message.content == want.outputs[0].text

    body = {"model": MODEL, "messages": messages, "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{idle.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == want.outputs[0].text
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


def test_chat_logprobs(idle, ref):
    messages = [{"role": "user", "content": "Count to three."}]
    r = idle.openai().chat.completions.create(model=MODEL, messages=messages, max_tokens=6, logprobs=True,
                                              top_logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3)
    want = ref.chat(messages, params, use_tqdm=False)[0].outputs[0]
    assert len(content) == 6
    for item, tid, step in zip(content, want.token_ids, want.logprobs):
        assert item.logprob == pytest.approx(step[tid].logprob, abs=1e-4)
        assert item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 3
        tops = [t.logprob for t in item.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert item.top_logprobs[0].token == item.token  # greedy picks the most likely


def test_echo_logprobs_for_lm_eval(idle, ref):
    """lm-eval's local-completions loglikelihood: token-id prompts, echo, logprobs=1,
    max_tokens=1; it sums token_logprobs[ctxlen:-1] and checks greediness on top_logprobs."""
    tok = ref.get_tokenizer()
    pairs = [("The capital of France is", " Paris"), ("One, two,", " three")]
    prompts = [tok(c).input_ids + tok(x).input_ids for c, x in pairs]
    body = {"model": MODEL, "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
    r = httpx.post(f"{idle.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    for (ctx, _), ids, choice in zip(pairs, prompts, choices):
        lp = choice["logprobs"]
        assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
        assert len(lp["tokens"]) == len(ids) + 1  # every prompt token, then the generated one
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
        assert choice["text"].startswith(tok.decode(ids))
        want = ref.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
                            use_tqdm=False)[0].prompt_logprobs
        expected = [want[j][ids[j]].logprob for j in range(1, len(ids))]
        assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-4)
        ctxlen = len(tok(ctx).input_ids)
        loglik = sum(lp["token_logprobs"][ctxlen:-1])  # exactly what lm-eval computes
        assert loglik == pytest.approx(sum(expected[ctxlen - 1 :]), abs=1e-4)
        for top, value in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:]):
            assert value in top.values() and max(top.values()) >= value

    # echo without generation (max_tokens=0): the prompt scored, nothing generated
    r = httpx.post(f"{idle.url}/v1/completions", json={**body, "prompt": prompts[0], "max_tokens": 0}, timeout=60).json()
    c = r["choices"][0]
    assert len(c["logprobs"]["tokens"]) == len(prompts[0]) and c["text"] == tok.decode(prompts[0])
    assert c["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 0


def test_n_samples_with_seed(idle, ref):
    want = ref.generate("Tell me", SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    client = idle.openai()
    kw = dict(model=MODEL, prompt="Tell me", n=3, temperature=1.0, seed=7, max_tokens=8, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw)
    assert sorted(c.index for c in full.choices) == [0, 1, 2]
    assert [c.text for c in sorted(full.choices, key=lambda c: c.index)] == [o.text for o in want.outputs]
    assert len({c.text for c in full.choices}) > 1
    streamed = {i: "" for i in range(3)}
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert list(streamed.values()) == [o.text for o in want.outputs]


def test_stop_strings(idle, ref):
    text = _greedy(ref, PROMPT, 20).outputs[0].text
    stop = text[len(text) // 2 :].strip()[:3]
    expected = text[: text.index(stop)]
    client = idle.openai()
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=20, stop=[stop, "zzzz-never"], **GREEDY)
    full = client.completions.create(**kw).choices[0]
    assert (full.text, full.finish_reason, full.model_extra["stop_reason"]) == (expected, "stop", stop)
    streamed = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed) == expected  # held-back prefixes never leak
    assert streamed[-1].choices[0].finish_reason == "stop"


BAD = [
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, "n"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10_000}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi " * 600}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 10**9]}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "stop_token_ids": [10**9]}, "stop_token_ids"),
    ("/v1/completions", {"prompt": "hi", "min_tokens": 20, "max_tokens": 5}, "min_tokens"),
    ("/v1/completions", {"prompt": {"not": "a prompt"}}, "prompt"),
    ("/v1/completions", {"temperature": 0}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "chat_template": "{{ 1 }}"}, "chat_template"),
    # fields that would change the answer if honoured: 400 naming them, never a 200 that ignored them
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
     "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("/v1/completions", {"prompt": "hi", "guided_json": {"type": "object"}}, "guided_json"),
    ("/v1/completions", {"prompt": "hi", "response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/completions", {"prompt": "hi", "use_beam_search": True}, "use_beam_search"),
]


def test_text_response_format_and_declined_tools_are_served(idle):
    """The defaults of the refused fields still pass: 'text', and tools with tool_choice 'none'."""
    msgs = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
    for extra in ({"response_format": {"type": "text"}},
                  {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "none"}):
        r = httpx.post(f"{idle.url}/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 2, **extra},
                       timeout=60)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("path,body,param", BAD, ids=[f"{p.rsplit('/', 1)[-1]}-{q}-{i}" for i, (p, _, q) in enumerate(BAD)])
def test_bad_input_is_400(idle, path, body, param):
    r = httpx.post(f"{idle.url}{path}", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == 400 and err["type"] == "BadRequestError"
    assert err["param"] == param and err["message"]


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b'{"prompt": "hi", "temperature": NaN}'])
def test_malformed_json_is_400(idle, raw):
    r = httpx.post(f"{idle.url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400


def test_unknown_model_is_404(idle):
    with pytest.raises(openai.NotFoundError) as e:
        idle.openai().completions.create(model="gpt-5", prompt="hi", max_tokens=2)
    assert e.value.body["type"] == "NotFoundError" and e.value.body["param"] == "model"
    # the alias (the model argument as given) is accepted
    assert idle.openai().completions.create(model="tiny", prompt="hi", max_tokens=2).choices
    assert httpx.get(f"{idle.url}/no/such/route").json()["error"]["code"] == 404


def test_tokenizer_routes(idle, ref):
    tok = ref.get_tokenizer()
    r = httpx.post(f"{idle.url}/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}).json()
    assert r["tokens"] == tok("Hello world", add_special_tokens=False).input_ids and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 512
    back = httpx.post(f"{idle.url}/detokenize", json={"tokens": r["tokens"]}).json()
    assert back == {"prompt": "Hello world"}
    assert httpx.post(f"{idle.url}/detokenize", json={"tokens": [-1]}).status_code == 400
    info = httpx.get(f"{idle.url}/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    messages = [{"role": "user", "content": "hi"}]
    chat_ids = httpx.post(f"{idle.url}/tokenize", json={"messages": messages}).json()["tokens"]
    want = ref.chat(messages, SamplingParams(max_tokens=1), use_tqdm=False)[0].prompt_token_ids
    assert chat_ids == want


def test_chat_template_flag_replaces_the_models(start_server, tiny_llama):
    """serve --chat-template: chats are rendered with the operator's template, not the model's (one path:
    chat_template.render_chat); a request's own template is still refused (test_bad_input_is_400 above)."""
    from llmpress.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model=str(tiny_llama), max_num_seqs=2, kv_cache_memory_bytes=64 << 20, max_model_len=512))
    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    with start_server(engine, chat_template=template) as s:
        r = httpx.post(f"{s.url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == engine.tokenizer("<user>hi<assistant>", add_special_tokens=False).input_ids
