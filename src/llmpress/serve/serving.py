"""What /v1/completions and /v1/chat/completions share: model-name check, admission,
tokenisation off the event loop, context-length checks, the disconnect watcher, the
request lifecycle, and the SSE framing.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from transformers import AutoTokenizer

from ..engine import Logprob, RequestOutput, SamplingError, SamplingParams
from ..engine.sampling import generation_defaults
from .async_engine import AsyncEngine, ClientDisconnected, EngineFailed, EngineOverloaded, EngineStopped, RequestStream
from .protocol import APIError, SamplingRequest

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


def clamp_logprob(v: float) -> float:
    """JSON has no -inf (or NaN); vLLM reports -9999 for impossible tokens."""
    return max(v, -9999.0) if not math.isnan(v) else -9999.0


def as_api_error(e: BaseException) -> APIError:
    """Map what generation can raise to an HTTP status (ValueError/TypeError: bad input)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, EngineOverloaded):
        return APIError(str(e), 503)
    if isinstance(e, EngineStopped):
        return APIError(str(e), 503)
    if isinstance(e, EngineFailed):
        return APIError(str(e), 500)
    if isinstance(e, SamplingError):
        name = str(e).split("=", 1)[0]
        return APIError(str(e), 400, param=name if name.isidentifier() else None)
    if isinstance(e, (ValueError, TypeError)):
        return APIError(str(e), 400)
    return APIError(f"internal error: {e!r}", 500)


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, model_names: list[str]):
        core = engine.engine
        self.engine = engine
        self.model_names = model_names  # the first is the id /v1/models lists; the rest are aliases
        self.model_path = core.path
        self.max_model_len = core.max_model_len
        self.vocab_size = core.cfg.vocab_size
        # Our own tokenizer on our own single thread: the engine thread decodes with its
        # copy, and a huge prompt or chat template must not stall the event loop.
        self.tokenizer = AutoTokenizer.from_pretrained(core.path)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmpress-tokenizer")
        self.defaults = self._generation_defaults()

    def _generation_defaults(self) -> dict[str, Any]:
        return generation_defaults(self.model_path)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- checks ---------------------------------------------------------------------------
    def check_model(self, name: str | None) -> str:
        if name is not None and name not in self.model_names:
            raise APIError(f"The model `{name}` does not exist; this server serves `{self.model_names[0]}`.", 404, "model")
        return self.model_names[0]

    def check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise APIError("the prompt is empty: give at least one token", param="prompt")
        if bad := [t for t in ids if not 0 <= t < self.vocab_size]:
            raise APIError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})", param="prompt")
        if len(ids) >= self.max_model_len:
            raise APIError(f"This model's maximum context length is {self.max_model_len} tokens. However, your request "
                           f"has {len(ids)} input tokens. Please reduce the length of the input.", param="prompt")

    def max_tokens(self, prompt_len: int, requested: int | None) -> int:
        """vLLM's rule: an explicit max_tokens must fit next to the prompt; None means the
        rest of the context (capped by generation_config's max_new_tokens)."""
        room = self.max_model_len - prompt_len
        if requested is None:
            return min(room, self.defaults.get("max_tokens", room))
        if requested > room:
            raise APIError(f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's maximum "
                           f"context length is {self.max_model_len} tokens and your request has {prompt_len} input "
                           f"tokens ({requested} > {self.max_model_len} - {prompt_len}).", param="max_tokens")
        return requested

    def sampling_params(self, req: SamplingRequest, max_tokens: int, **extra: Any) -> SamplingParams:
        if bad := [t for t in req.stop_token_ids or [] if not 0 <= t < self.vocab_size]:
            raise APIError(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})", param="stop_token_ids")
        try:
            return req.sampling_params(max_tokens, self.defaults, **extra)
        except (SamplingError, TypeError) as e:
            raise as_api_error(e) from None

    async def run_tokenizer(self, fn: Callable[..., T], *args: Any) -> T:
        """Tokenizer work on the tokenizer thread. What it raises comes from the client's
        text (e.g. a lone surrogate the Rust tokenizer refuses): a 400."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except (ValueError, TypeError, UnicodeError) as e:
            raise APIError(f"cannot tokenize the input: {e}") from None

    # -- lifecycle ------------------------------------------------------------------------
    def open(self, raw: Request, request_ids: list[str]) -> RequestStream:
        """Admit the request (503 past the bound) and watch its connection: a client that
        goes away releases the stream at once, so its sequences stop and free their KV
        blocks even while it is still waiting in the queue and nothing is being sent."""
        try:
            stream = self.engine.open(request_ids, time.time())
        except (EngineOverloaded, EngineStopped) as e:
            raise as_api_error(e) from None
        stream.watcher = asyncio.create_task(_watch_disconnect(raw, stream))
        return stream

    async def submit(self, stream: RequestStream, prompts: list[dict], params: list[SamplingParams]) -> None:
        try:
            await self.engine.submit(stream, prompts, params)
        except ClientDisconnected:
            raise
        except Exception as e:
            raise as_api_error(e) from None

    async def collect(self, stream: RequestStream) -> dict[int, RequestOutput]:
        """Run a non-streaming request to the end: {prompt index: final RequestOutput}."""
        final: dict[int, RequestOutput] = {}
        try:
            async for batch in stream:
                final.update(batch)
        except ClientDisconnected:
            raise
        except Exception as e:
            raise as_api_error(e) from None
        return final

    async def sse_frames(self, stream: RequestStream, frames: AsyncIterator[str]) -> AsyncIterator[str]:
        """Wrap a chunk generator: an error mid-stream becomes an SSE error event, every
        stream ends with [DONE], and the stream is released whatever happens."""
        try:
            async for frame in frames:
                yield frame
        except ClientDisconnected:
            return  # nobody is listening (a cancellation propagates; `finally` still releases)
        except Exception as e:
            yield sse(as_api_error(e).body())
        finally:
            stream.release()
        yield DONE


async def _watch_disconnect(raw: Request, stream: RequestStream) -> None:
    # The body was read before the handler ran, so the next ASGI message is the disconnect.
    while (await raw.receive())["type"] != "http.disconnect":
        pass
    stream.release()


def completion_top(step: dict[int, Logprob], decode: Callable[[int], str]) -> dict[str, float]:
    """vLLM's legacy `top_logprobs` entry: the chosen token and the top-k, by string."""
    return {(lp.decoded_token if lp.decoded_token is not None else decode(t)): clamp_logprob(lp.logprob)
            for t, lp in step.items()}
