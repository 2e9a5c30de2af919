"""The one chat-template path (llmpress.chat_template): ids and text agree with transformers' own
rendering, a replacement template wins, and a model without a template gets one line naming the fix."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llmpress.chat_template import ChatTemplateError, has_chat_template, render_chat
from llmpress.errors import LlmpressError

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def tok(default_model):
    return AutoTokenizer.from_pretrained(default_model)


def test_ids_and_text_match_transformers(tok):
    text = render_chat(tok, CONV, tokenize=False)
    assert text == tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt
    ids = render_chat(tok, CONV, tokenize=True)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert ids == tok(text, add_special_tokens=False).input_ids  # the template writes its own special tokens
    bare = render_chat(tok, CONV, tokenize=False, add_generation_prompt=False)
    assert text.startswith(bare) and bare != text


def test_continue_final_message_leaves_the_turn_open(tok):
    conv = CONV + [{"role": "assistant", "content": "Hello, I am"}]
    text = render_chat(tok, conv, tokenize=False, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("Hello, I am")


def test_replacement_template_and_kwargs(tok):
    t = "{% for m in messages %}[{{ m.role }}:{{ m.content }}{{ suffix }}]{% endfor %}"
    assert render_chat(tok, CONV, tokenize=False, chat_template=t, suffix="!") == "[system:Be brief.!][user:Hi there!]"


def test_no_template_is_one_clear_error(default_model):
    bare = AutoTokenizer.from_pretrained(default_model)
    bare.chat_template = None
    assert not has_chat_template(bare)
    with pytest.raises(ChatTemplateError) as e:
        render_chat(bare, CONV, tokenize=True)
    assert isinstance(e.value, LlmpressError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "\n" not in msg and "no chat template" in msg and "--chat-template" in msg
    # a replacement template is enough on such a tokenizer
    assert render_chat(bare, CONV, tokenize=False, chat_template="{{ messages[-1].content }}") == "Hi there"
