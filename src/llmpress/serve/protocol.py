"""OpenAI wire format: request and response models (vLLM's field names and defaults).

Requests accept unknown fields (clients such as GuideLLM send extras) but reject
NaN / Infinity, which Python's json parser lets through and which would otherwise
reach the sampler. Responses are plain models; `model_dump_json` writes them.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..engine import SamplingParams

MAX_N = 128  # samples per request; bounds the work one request can queue
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
INT64 = 2**63 - 1


class APIError(Exception):
    """An error the client caused (or an overload); rendered in OpenAI's error shape."""

    TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
             503: "ServiceUnavailableError", 500: "InternalServerError"}

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "APIError"),
                          "param": self.param, "code": self.status}}

    def json(self) -> str:
        # ASCII-escaped: messages quote client input, which may hold lone surrogates
        # that UTF-8 cannot encode (a 500 while reporting a 400)
        return json.dumps(self.body(), ensure_ascii=True)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# -- requests -----------------------------------------------------------------------
class StreamOptions(OpenAIModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


UNSUPPORTED_FIELDS = {  # request field -> why it cannot be honoured here
    "response_format": "no JSON mode or structured output; ask for JSON in the prompt, or use --engine vllm",
    "guided_json": "no structured output", "guided_regex": "no structured output", "guided_choice": "no structured output",
    "guided_grammar": "no structured output", "structured_outputs": "no structured output",
    "tool_choice": "no tool-call parser", "functions": "no tool-call parser", "function_call": "no tool-call parser",
    "use_beam_search": "sampling only", "prediction": "no predicted outputs", "audio": "text only", "modalities": "text only",
}
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class SamplingRequest(OpenAIModel):
    """Fields shared by /v1/completions and /v1/chat/completions. None means "the model's
    generation_config.json default, else OpenAI's" (vLLM's --generation-config auto)."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = Field(None, ge=-(2**63), le=INT64 - MAX_N)  # the engine seeds sample i with seed + i
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def check(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise APIError("stream_options can only be given when stream is true", param="stream_options")
        if self.logit_bias:
            raise APIError("logit_bias is not supported", param="logit_bias")
        # Fields that would change the output if honoured: a 400 naming them, never a 200 that ignored them.
        # Other unknown fields pass, as in vLLM (which logs and ignores them).
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED_FIELDS and value not in (None, False, [], {}, "none", "auto", {"type": "text"}):
                raise APIError(f"{name} is not supported by this server ({UNSUPPORTED_FIELDS[name]})", param=name)

    def sampling_params(self, max_tokens: int, defaults: dict[str, Any], **extra: Any) -> SamplingParams:
        """Raises SamplingError (a ValueError) naming the bad field."""

        def pick(name: str, fallback: Any) -> Any:
            v = getattr(self, name)
            return v if v is not None else defaults.get(name, fallback)

        return SamplingParams(
            n=self.n, temperature=pick("temperature", 1.0), top_p=pick("top_p", 1.0), top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0), seed=self.seed, presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0, repetition_penalty=pick("repetition_penalty", 1.0),
            stop=self.stop, stop_token_ids=self.stop_token_ids, include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos, max_tokens=max_tokens, min_tokens=self.min_tokens,
            skip_special_tokens=self.skip_special_tokens, **extra,
        )


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise APIError("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError("best_of other than n is not supported", param="best_of")
        if self.max_tokens == 0 and not self.echo:
            raise APIError("max_tokens must be at least 1 (0 is only allowed with echo)", param="max_tokens")


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def template_dict(self) -> dict:
        """Content parts flattened to text ("string" content format), as vLLM does for
        templates that expect a string."""
        content = self.content
        if isinstance(content, list):
            if bad := [p.type for p in content if p.type not in ("text", "input_text")]:
                raise APIError(f"content parts of type {bad[0]!r} are not supported (text only)", param="messages")
            content = "\n".join(p.text or "" for p in content)
        msg = {**(self.model_extra or {}), "role": self.role, "content": content if content is not None else ""}
        if self.name is not None:
            msg["name"] = self.name
        return msg


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    def check(self) -> None:
        super().check()
        if bad := [m.role for m in self.messages if m.role not in CHAT_ROLES]:
            raise APIError(f"message role {bad[0]!r} is not one of {', '.join(CHAT_ROLES)}", param="messages")
        if self.tools and (self.model_extra or {}).get("tool_choice") != "none":
            raise APIError("tools are not supported by this server (it has no tool-call parser, so calls would come "
                           "back as plain text); drop tools, set tool_choice 'none', or use --engine vllm", param="tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError("top_logprobs needs logprobs to be true", param="top_logprobs")
        if self.continue_final_message and self.add_generation_prompt:
            raise APIError("continue_final_message and add_generation_prompt cannot both be true",
                           param="continue_final_message")


class TokenizeRequest(OpenAIModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages (template adds them)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int]


# -- responses ----------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    logprob: float
    rank: int
    decoded_token: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[int, PromptLogprob] | None] | None = None  # vLLM's extension, when asked for


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatStreamChoice(BaseModel):
    index: int
    delta: dict[str, str]  # {"role", "content"} on the first chunk, {"content"} after
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "llmpress"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str
