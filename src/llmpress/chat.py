"""`llmpress chat`: an interactive conversation on the embedded engine, streamed token by token.

Ctrl-C during a reply stops that reply and keeps the conversation; Ctrl-C or Ctrl-D at the prompt
ends the session. A conversation that outgrows the context drops its oldest turns and says so.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable, TextIO

from .chat_template import render_chat
from .engine import LLM, SamplingParams

HELP = """commands:
  /reset   forget the conversation (the system prompt stays)
  /exit    end the session (also Ctrl-D, or Ctrl-C at the prompt)
  /help    this list
Ctrl-C during a reply stops the reply and keeps the conversation."""


def chat_loop(llm: LLM, params: SamplingParams, system: str | None = None, read: Callable[[str], str] = input,
              out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    head = [{"role": "system", "content": system}] if system else []
    turns: list[dict] = []
    print("chat with the model; /help lists commands, Ctrl-D ends", file=err)
    try:  # Ctrl-C outside a reply (at the prompt, or between two prompts) ends the session cleanly
        while True:
            try:
                line = read("> ")
            except (EOFError, KeyboardInterrupt):
                print(file=out)
                return 0
            cmd = line.strip()
            if not cmd:
                continue
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/reset":
                turns = []
                print("(conversation cleared)", file=err)
                continue
            if cmd == "/help":
                print(HELP, file=err)
                continue
            if cmd.startswith("/") and " " not in cmd:
                print(f"unknown command {cmd}; /help lists them", file=err)
                continue
            turns.append({"role": "user", "content": line})
            ids, dropped = fit_context(llm, head, turns, params.max_tokens)
            if ids is None:
                n = len(_render(llm, head + turns[-1:]))
                print(f"(that message is {n} tokens with the template; the context holds {llm.engine.max_model_len}: "
                      "shorten it)", file=err)
                turns.pop()
                continue
            if dropped:
                del turns[:dropped]
                print(f"(the conversation outgrew the {llm.engine.max_model_len}-token context: "
                      f"dropped the oldest {dropped} messages)", file=err)
            reply, stopped = stream_reply(llm, ids, params, out)
            if stopped:
                print("\n(reply stopped)", file=err)
            turns.append({"role": "assistant", "content": reply})
    except KeyboardInterrupt:
        print(file=out)
        return 0


def _render(llm: LLM, messages: list[dict]) -> list[int]:
    return render_chat(llm.get_tokenizer(), messages, tokenize=True, add_generation_prompt=True)


def fit_context(llm: LLM, head: list[dict], turns: list[dict], max_tokens: int | None) -> tuple[list[int] | None, int]:
    """The prompt of the longest recent part of `turns` that leaves room for a reply, and how many of
    the oldest turns it leaves out (whole user/assistant pairs first); None if the last message alone
    does not fit."""
    limit = llm.engine.max_model_len
    room = min(max_tokens or limit, limit // 2)  # a reply needs room; at most half the context is held back
    for start in range(len(turns)):
        if start and turns[start]["role"] != "user":  # keep each kept reply with its question
            continue
        ids = _render(llm, head + turns[start:])
        if len(ids) + room <= limit or (start == len(turns) - 1 and len(ids) < limit):
            return ids, start
    return None, len(turns)


def stream_reply(llm: LLM, ids: list[int], params: SamplingParams, out: TextIO) -> tuple[str, bool]:
    """Generate one reply, writing each piece of text as its token arrives. Ctrl-C is taken between
    engine steps (a flag, not an exception mid-step), so the engine is never left half-updated."""
    engine = llm.engine
    rid = f"chat-{id(ids)}-{len(ids)}"
    engine.add_request(rid, {"prompt_token_ids": ids}, params)
    stop: list[bool] = []
    old = signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    text = ""
    try:
        while not stop and engine.has_unfinished():
            for o in engine.step():
                if o.request_id != rid:
                    continue
                new = o.outputs[0].text
                out.write(new[len(text):])
                out.flush()
                text = new
                if o.finished:
                    out.write("\n")
                    return text, False
    finally:
        signal.signal(signal.SIGINT, old)
        if stop:
            engine.abort_request(rid)
    return text, bool(stop)
