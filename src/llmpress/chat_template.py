"""The one place a conversation becomes a prompt: the model's chat template (or a replacement)
rendered by transformers' `apply_chat_template`.

Every caller comes through here: `LLM.chat` and `llmpress chat` (token ids), the server's
/v1/chat/completions and /tokenize (text, tokenised by the server), lm-eval's adapter (text)
and the calibration set (text). Callers keep their own choice of ids or text: a template that
writes BOS must not get a second one, so the text paths tokenise without special tokens.
"""
from __future__ import annotations

from typing import Any

from .errors import LlmpressError


class ChatTemplateError(LlmpressError, ValueError):
    """A conversation the template cannot render (no template, a Jinja error, bad kwargs)."""


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a template of its own (or one set by serve --chat-template)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: list[dict], *, tokenize: bool, add_generation_prompt: bool = True,
                continue_final_message: bool = False, chat_template: str | None = None,
                **template_kwargs: Any) -> str | list[int]:
    """`messages` ([{role, content}, ...]) through the chat template: the prompt's token ids when
    `tokenize`, else its text. `chat_template` replaces the tokenizer's own for this call;
    `template_kwargs` reach the Jinja template (tools, enable_thinking, ...)."""
    try:
        out = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=tokenize,
                                            add_generation_prompt=add_generation_prompt,
                                            continue_final_message=continue_final_message, return_dict=False,
                                            **template_kwargs)
    except Exception as e:  # Jinja errors, a model without a template, kwargs the template rejects
        fix = ("" if chat_template or has_chat_template(tokenizer)
               else "; the model has no chat template: pass one (LLM.chat(chat_template=...), serve --chat-template)")
        raise ChatTemplateError(f"cannot apply the chat template: {e}{fix}") from None
    if not tokenize:
        return out
    # transformers returns a BatchEncoding from some tokenizers even with return_dict=False
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "input_ids") else out)
