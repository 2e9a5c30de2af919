"""POST /v1/chat/completions: the model's chat template, role-first streaming deltas,
logprobs in the chat shape ({"content": [{token, logprob, bytes, top_logprobs}]})."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..chat_template import ChatTemplateError, render_chat
from ..engine import CompletionOutput, Logprob, RequestOutput
from .async_engine import RequestStream
from .protocol import (APIError, AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionRequest,
                       ChatCompletionResponse, ChatLogprob, ChatLogprobs, ChatStreamChoice, TokenizeRequest,
                       TopLogprob, UsageInfo, random_id)
from .serving import OpenAIServing, clamp_logprob, sse


def request_prompt(tokenizer, req: ChatCompletionRequest | TokenizeRequest, add_special_tokens: bool = False
                ) -> tuple[str, list[int]]:
    """Prompt text and ids from the model's own template. The text is tokenised without
    special tokens by default: the template already wrote BOS and friends (as in vLLM)."""
    if getattr(req, "chat_template", None):
        # A template is code run on the server; vLLM refuses one from a request unless the
        # operator trusts request templates. There is no such switch here: refuse.
        raise APIError("chat_template in a request is not accepted; the model's own template is used",
                       param="chat_template")
    messages = [m.template_dict() for m in req.messages or []]
    kwargs = dict(req.chat_template_kwargs or {})
    if tools := getattr(req, "tools", None):
        kwargs["tools"] = tools
    try:
        text = render_chat(tokenizer, messages, tokenize=False, add_generation_prompt=req.add_generation_prompt,
                                    continue_final_message=req.continue_final_message, **kwargs)
    except ChatTemplateError as e:  # jinja errors, a model without a template, bad kwargs: all the request's doing
        raise APIError(str(e), param="messages") from None
    return text, tokenizer(text, add_special_tokens=add_special_tokens).input_ids


@dataclass
class _Sent:
    tokens: int = 0
    text: int = 0
    done: bool = False


class Chat:
    def __init__(self, serving: OpenAIServing):
        self.s = serving

    async def create(self, req: ChatCompletionRequest, raw: Request):
        s = self.s
        model = s.check_model(req.model)
        req.check()
        rid = random_id("chatcmpl")
        stream = s.open(raw, [rid])
        try:
            text, ids = await s.run_tokenizer(request_prompt, s.tokenizer, req)
            s.check_prompt(ids)
            max_tokens = s.max_tokens(len(ids), req.max_completion_tokens or req.max_tokens)
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
            params = s.sampling_params(req, max_tokens, logprobs=logprobs)
            await s.submit(stream, [{"prompt_token_ids": ids, "prompt": text}], [params])
        except BaseException:
            stream.release()
            raise
        if req.stream:
            return StreamingResponse(s.sse_frames(stream, self._chunks(req, model, rid, stream)),
                                     media_type="text/event-stream")
        try:
            out = (await s.collect(stream))[0]
        finally:
            stream.release()
        choices = [ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                              logprobs=self._logprobs(req, c, 0), finish_reason=c.finish_reason, stop_reason=c.stop_reason)
                   for c in out.outputs]
        body = ChatCompletionResponse(id=rid, model=model, choices=choices, usage=_usage(out))
        return Response(body.model_dump_json(), media_type="application/json")

    def _logprobs(self, req: ChatCompletionRequest, c: CompletionOutput, start: int) -> ChatLogprobs | None:
        if not req.logprobs:
            return None
        k = req.top_logprobs or 0
        ids = c.token_ids[start:]
        steps: list[dict[int, Logprob]] = c.logprobs[start : start + len(ids)]  # the live list may be ahead
        content = []
        for tid, step in zip(ids, steps):
            top = sorted((lp.rank, t, lp) for t, lp in step.items() if lp.rank <= k)  # OpenAI: the k most likely
            content.append(ChatLogprob(**self._entry(tid, step[tid]),
                                       top_logprobs=[TopLogprob(**self._entry(t, lp)) for _, t, lp in top]))
        return ChatLogprobs(content=content)

    def _entry(self, token_id: int, lp: Logprob) -> dict:
        tok = lp.decoded_token if lp.decoded_token is not None else self.s.tokenizer.decode([token_id])
        return {"token": tok, "logprob": clamp_logprob(lp.logprob), "bytes": list(tok.encode("utf-8", "replace"))}

    async def _chunks(self, req: ChatCompletionRequest, model: str, rid: str, stream: RequestStream) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list[ChatStreamChoice], usage: UsageInfo | None = None) -> str:
            return sse(ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage))

        # The role comes first, before any token, as OpenAI and vLLM send it.
        for i in range(req.n):
            yield chunk([ChatStreamChoice(index=i, delta={"role": "assistant", "content": ""})])
        sent = [_Sent() for _ in range(req.n)]
        last: RequestOutput | None = None
        async for batch in stream:
            last = out = batch[0]
            for c in out.outputs:
                st = sent[c.index]
                if st.done or not (len(c.token_ids) > st.tokens or len(c.text) > st.text or c.finish_reason):
                    continue
                delta = ChatStreamChoice(index=c.index, delta={"content": c.text[st.text:]},
                                         logprobs=self._logprobs(req, c, st.tokens),
                                         finish_reason=c.finish_reason, stop_reason=c.stop_reason)
                st.tokens, st.text, st.done = len(c.token_ids), len(c.text), c.finish_reason is not None
                yield chunk([delta])
        if req.stream_options is not None and req.stream_options.include_usage and last is not None:
            yield chunk([], _usage(last))


def _usage(out: RequestOutput) -> UsageInfo:
    gen = sum(len(c.token_ids) for c in out.outputs)
    return UsageInfo(prompt_tokens=len(out.prompt_token_ids), completion_tokens=gen,
                     total_tokens=len(out.prompt_token_ids) + gen)
