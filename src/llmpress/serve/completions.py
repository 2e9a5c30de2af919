"""POST /v1/completions: prompts as text or token ids, one or many; echo and the legacy
`logprobs` shape {tokens, token_logprobs, top_logprobs, text_offset} that lm-eval's
`local-completions` reads (echo + logprobs: every prompt token, the first one null).
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..engine import CompletionOutput, Logprob, RequestOutput
from .async_engine import RequestStream
from .protocol import (APIError, CompletionChoice, CompletionLogProbs, CompletionRequest, CompletionResponse, PromptLogprob,
                       UsageInfo, random_id)
from .serving import OpenAIServing, clamp_logprob, completion_top, sse


@dataclass
class _Prompt:
    text: str | None  # the text to echo (decoded when the prompt came as token ids)
    ids: list[int]


class Completions:
    def __init__(self, serving: OpenAIServing):
        self.s = serving

    async def create(self, req: CompletionRequest, raw: Request):
        s = self.s
        model = s.check_model(req.model)
        req.check()
        prompts = _split(req.prompt)
        rid = random_id("cmpl")
        stream = s.open(raw, [f"{rid}-{i}" for i in range(len(prompts))])
        try:
            inputs = await s.run_tokenizer(self._tokenize, prompts, req.echo)
            # echo with max_tokens=0 scores the prompt without generating (lm-eval's
            # loglikelihood); the engine needs >= 1 token, so one is generated and dropped.
            params = []
            for p in inputs:
                max_tokens = 1 if req.max_tokens == 0 else s.max_tokens(len(p.ids), req.max_tokens)
                prompt_lp = req.prompt_logprobs if req.prompt_logprobs is not None else req.logprobs if req.echo else None
                params.append(s.sampling_params(req, max_tokens, logprobs=req.logprobs, prompt_logprobs=prompt_lp))
            await s.submit(stream, [{"prompt_token_ids": p.ids, "prompt": p.text} for p in inputs], params)
        except BaseException:
            stream.release()
            raise
        if req.stream:
            return StreamingResponse(s.sse_frames(stream, self._chunks(req, model, rid, inputs, stream)),
                                     media_type="text/event-stream")
        try:
            final = await s.collect(stream)
        finally:
            stream.release()
        return Response(self._response(req, model, rid, inputs, final).model_dump_json(), media_type="application/json")

    def _tokenize(self, prompts: list[str | list[int]], echo: bool) -> list[_Prompt]:
        tok, out = self.s.tokenizer, []
        for p in prompts:
            ids = tok(p).input_ids if isinstance(p, str) else p
            self.s.check_prompt(ids)  # before decoding: ids outside the vocabulary must not reach the tokenizer
            out.append(_Prompt(p if isinstance(p, str) else tok.decode(ids) if echo else None, ids))
        return out

    # -- one choice's text and logprobs from token `start` on ---------------------------------
    def _piece(self, req: CompletionRequest, p: _Prompt, out: RequestOutput, c: CompletionOutput,
               start: int, text_start: int, with_prompt: bool, offset: int) -> tuple[str, CompletionLogProbs | None]:
        hidden = req.max_tokens == 0  # the one generated token is not part of the answer
        ids = [] if hidden else c.token_ids[start:]
        text = "" if hidden else c.text[text_start:]
        logprobs = None
        if req.logprobs is not None:
            # c.logprobs is the engine's live list: it may already be longer than c.token_ids
            steps: list[dict[int, Logprob] | None] = [] if hidden else list(c.logprobs[start : start + len(ids)])
            if with_prompt:
                ids, steps = out.prompt_token_ids + ids, list(out.prompt_logprobs or [None]) + steps
            logprobs = self._logprobs(ids, steps, offset)
        if with_prompt:
            text = (p.text or "") + text
        return text, logprobs

    def _logprobs(self, ids: list[int], steps: list[dict[int, Logprob] | None], offset: int) -> CompletionLogProbs:
        decode = self._decode
        out = CompletionLogProbs()
        for tid, step in zip(ids, steps):
            lp = step.get(tid) if step else None
            tok = lp.decoded_token if lp is not None and lp.decoded_token is not None else decode(tid)
            out.tokens.append(tok)
            out.token_logprobs.append(clamp_logprob(lp.logprob) if lp is not None else None)
            out.top_logprobs.append(completion_top(step, decode) if lp is not None else None)
            out.text_offset.append(offset)
            offset += len(tok)
        return out

    def _decode(self, token_id: int) -> str:
        return self.s.tokenizer.decode([token_id])

    @staticmethod
    def _finish(req: CompletionRequest, c: CompletionOutput) -> tuple[str | None, int | str | None]:
        if req.max_tokens == 0 and c.finish_reason is not None:
            return "length", None
        return c.finish_reason, c.stop_reason

    @staticmethod
    def _usage(req: CompletionRequest, finals: dict[int, RequestOutput]) -> UsageInfo:
        prompt = sum(len(o.prompt_token_ids) for o in finals.values())
        gen = 0 if req.max_tokens == 0 else sum(len(c.token_ids) for o in finals.values() for c in o.outputs)
        return UsageInfo(prompt_tokens=prompt, completion_tokens=gen, total_tokens=prompt + gen)

    # -- responses ------------------------------------------------------------------------------
    def _response(self, req: CompletionRequest, model: str, rid: str, inputs: list[_Prompt],
                  final: dict[int, RequestOutput]) -> CompletionResponse:
        choices = []
        for i, p in enumerate(inputs):
            out = final[i]
            for c in out.outputs:
                text, logprobs = self._piece(req, p, out, c, 0, 0, req.echo, 0)
                reason, stop_reason = self._finish(req, c)
                prompt_lps = None
                if req.prompt_logprobs is not None and out.prompt_logprobs is not None:
                    prompt_lps = [None if step is None else
                                  {t: PromptLogprob(logprob=clamp_logprob(lp.logprob), rank=lp.rank, decoded_token=lp.decoded_token)
                                   for t, lp in step.items()} for step in out.prompt_logprobs]
                choices.append(CompletionChoice(index=i * req.n + c.index, text=text, logprobs=logprobs,
                                                finish_reason=reason, stop_reason=stop_reason, prompt_logprobs=prompt_lps))
        return CompletionResponse(id=rid, model=model, choices=choices, usage=self._usage(req, final))

    async def _chunks(self, req: CompletionRequest, model: str, rid: str, inputs: list[_Prompt],
                      stream: RequestStream) -> AsyncIterator[str]:
        created = int(time.time())
        states: dict[int, _Sent] = defaultdict(_Sent)
        latest: dict[int, RequestOutput] = {}
        async for batch in stream:
            latest.update(batch)
            for i, out in sorted(batch.items()):
                for c in out.outputs:
                    k = i * req.n + c.index
                    st = states[k]
                    reason, stop_reason = self._finish(req, c)
                    echo_now = req.echo and not st.started
                    if st.done or not (len(c.token_ids) > st.tokens or len(c.text) > st.text or reason or echo_now):
                        continue  # nothing new for this choice (another sample or prompt moved)
                    text, logprobs = self._piece(req, inputs[i], out, c, st.tokens, st.text, echo_now, st.offset)
                    st.started, st.done = True, reason is not None
                    st.tokens, st.text, st.offset = len(c.token_ids), len(c.text), st.offset + len(text)
                    yield sse(CompletionResponse(id=rid, created=created, model=model, choices=[CompletionChoice(
                        index=k, text=text, logprobs=logprobs, finish_reason=reason, stop_reason=stop_reason)]))
        if req.stream_options is not None and req.stream_options.include_usage:
            yield sse(CompletionResponse(id=rid, created=created, model=model, choices=[], usage=self._usage(req, latest)))


@dataclass
class _Sent:
    """What one streamed choice has sent so far."""

    tokens: int = 0
    text: int = 0  # characters of the generated text
    offset: int = 0  # characters of the choice's whole streamed text (echoed prompt included)
    started: bool = False
    done: bool = False


def _split(prompt: str | list) -> list[str | list[int]]:
    """One request may carry several prompts: a list of strings or a list of token lists."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError("prompt is empty: give a string, a list of strings, token ids or a list of token-id lists",
                       param="prompt")
    return prompts
