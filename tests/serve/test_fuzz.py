"""Fuzz the real server with hypothesis: over a thousand malformed or extreme bodies to
the completion, chat and tokenizer routes. Every answer is a 2xx or a 4xx in OpenAI's
error shape (never a 5xx), none hangs, and afterwards the server still answers and
every KV block is free again."""
from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpress.engine import SamplingParams

EXAMPLES = 1100
ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]

# Leaves a client might send anywhere, extreme ones included.
junk = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 3, 2**31, 2**63, 49151, 49152]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", " ", "\x00", "\ud7ff", "😀" * 3, "</s>", "<|im_end|>"]),
)
json_value = st.recursive(junk, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
small_tokens = st.lists(st.integers(min_value=-3, max_value=49155), max_size=6)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "", 3])},
                                optional={"content": st.one_of(st.text(max_size=30), json_value,
                                          st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]),
                                                                          "text": st.text(max_size=20)}), max_size=2))})

FIELDS = {
    "model": st.one_of(st.just("tiny-llama"), st.just("tiny"), json_value),
    "prompt": st.one_of(
        st.text(max_size=30),
        small_tokens,
        st.lists(small_tokens, max_size=3),
        st.lists(st.text(max_size=10), max_size=3),
        json_value,
    ),
    "messages": st.one_of(st.lists(message, max_size=3), json_value),
    "max_tokens": st.one_of(st.integers(min_value=-2, max_value=4), junk),
    "max_completion_tokens": st.one_of(st.integers(min_value=-2, max_value=4), junk),
    "temperature": junk,
    "top_p": junk,
    "top_k": junk,
    "min_p": junk,
    "seed": junk,
    "n": st.one_of(st.integers(min_value=-1, max_value=3), junk),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=5), json_value),
    "stop_token_ids": st.one_of(small_tokens, json_value),
    "logprobs": st.one_of(st.integers(min_value=-1, max_value=25), junk),
    "top_logprobs": st.one_of(st.integers(min_value=-1, max_value=25), junk),
    "echo": junk,
    "stream": st.booleans(),
    "stream_options": json_value,
    "ignore_eos": junk,
    "min_tokens": junk,
    "presence_penalty": junk,
    "frequency_penalty": junk,
    "repetition_penalty": junk,
    "logit_bias": json_value,
    "tokens": st.one_of(small_tokens, json_value),
    "add_special_tokens": junk,
    "add_generation_prompt": junk,
}
body = st.one_of(
    st.fixed_dictionaries({}, optional=FIELDS),
    st.fixed_dictionaries(
        {"model": st.just("tiny-llama"), "prompt": st.text(max_size=20)},  # mostly valid
        optional={k: v for k, v in FIELDS.items() if k not in ("model", "prompt")},
    ),
    json_value,
)
raw = st.one_of(
    body.map(lambda b: json.dumps(b, allow_nan=True).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
)


def test_fuzz_no_5xx_no_hang(idle, ref):
    client = httpx.Client(base_url=idle.url, timeout=30)
    seen = {"n": 0, "4xx": 0}

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(route=st.sampled_from(ROUTES), payload=raw)
    def one(route: str, payload: bytes) -> None:
        r = client.post(route, content=payload, headers={"content-type": "application/json"})
        seen["n"] += 1
        assert r.status_code < 500, (route, payload[:300], r.status_code, r.text[:300])
        if r.status_code >= 400:
            seen["4xx"] += 1
            err = r.json()["error"]
            assert isinstance(err["message"], str) and err["message"] and err["type"]
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]")  # a stream always ends, errors included
        else:
            r.json()  # anything else is a JSON document

    one()
    assert seen["n"] >= 1000 and seen["4xx"] > 100
    # still answering, and correctly
    want = ref.generate("Hello", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)[0]
    got = client.post(
        "/v1/completions",
        json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True},
    ).json()
    assert got["choices"][0]["text"] == want.outputs[0].text
