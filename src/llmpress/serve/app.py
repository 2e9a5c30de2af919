"""The FastAPI application: routes, API-key check, and errors in OpenAI's shape.

Routes (vLLM's paths): POST /v1/completions, POST /v1/chat/completions, GET /v1/models,
GET /health, GET /metrics, GET /version, POST /tokenize, POST /detokenize,
GET /tokenizer_info. With an API key, every /v1 path needs `Authorization: Bearer KEY`
(as in vLLM; health, metrics and the tokenizer stay open).
"""
from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine import LLMEngine
from .async_engine import AsyncEngine, ClientDisconnected
from .chat import Chat, request_prompt
from .completions import Completions
from .metrics import Metrics
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse,
                       ModelCard, ModelList, TokenizeRequest, TokenizeResponse)
from .serving import OpenAIServing

log = logging.getLogger("llmpress.serve")


def create_app(engine: LLMEngine, served_model_names: list[str], api_key: str | None = None,
               max_queue: int = 256, chat_template: str | None = None) -> FastAPI:
    """`max_queue`: requests allowed to wait beyond the engine's max_num_seqs before new
    ones get 503 (counted per prompt; requests still being tokenised count too)."""
    metrics = Metrics(served_model_names[0])
    aengine = AsyncEngine(engine, metrics, max_pending=engine.config.max_num_seqs + max_queue)
    serving = OpenAIServing(aengine, served_model_names)
    if chat_template is not None:  # --chat-template replaces the model's own, as in vLLM
        serving.tokenizer.chat_template = chat_template
    completions, chat = Completions(serving), Chat(serving)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        aengine.start()
        try:
            yield
        finally:  # uvicorn has already drained (or, past its timeout, cancelled) the connections
            await aengine.shutdown()
            serving.close()

    app = FastAPI(title="llmpress", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.async_engine, app.state.metrics = engine, aengine, metrics
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if not aengine.alive:
            raise APIError(f"the engine is not running ({aengine.error!r})" if aengine.error else "the engine is not running", 503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/version")
    async def version() -> dict:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as pkg_version

        try:
            return {"version": pkg_version("llmpress")}
        except PackageNotFoundError:
            return {"version": "unknown"}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=serving.model_names[0], root=str(serving.model_path),
                                         max_model_len=serving.max_model_len)])

    @app.post("/v1/completions")
    async def create_completion(req: CompletionRequest, raw: Request):
        return await completions.create(req, raw)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(req: ChatCompletionRequest, raw: Request):
        return await chat.create(req, raw)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> TokenizeResponse:
        serving.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError("give exactly one of `prompt` or `messages`", param="prompt")

        def work() -> TokenizeResponse:
            tok = serving.tokenizer
            if req.messages is not None:
                _, ids = request_prompt(tok, req, add_special_tokens=bool(req.add_special_tokens))
            else:
                ids = tok(req.prompt, add_special_tokens=req.add_special_tokens is not False).input_ids
            strs = tok.convert_ids_to_tokens(ids) if req.return_token_strs else None
            return TokenizeResponse(count=len(ids), max_model_len=serving.max_model_len, tokens=ids, token_strs=strs)

        return await serving.run_tokenizer(work)

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> DetokenizeResponse:
        serving.check_model(req.model)
        limit = min(serving.vocab_size, len(serving.tokenizer))
        if bad := [t for t in req.tokens if not 0 <= t < limit]:
            raise APIError(f"token ids {bad[:5]} are outside the vocabulary [0, {limit})", param="tokens")
        return DetokenizeResponse(prompt=await serving.run_tokenizer(serving.tokenizer.decode, req.tokens))

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        return _tokenizer_info(serving)

    return app


class APIKeyMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which buffers and breaks disconnect detection on
    streams), and it runs before the body is parsed: a bad key is a 401, never a 400."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(got, self.expected):
                err = APIError("invalid or missing API key: send `Authorization: Bearer <key>`", 401)
                await error_response(err, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> Response:
        return error_response(e)

    @app.exception_handler(ClientDisconnected)
    async def gone(_: Request, e: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the access log does

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> Response:
        # FastAPI answers 422; OpenAI and vLLM answer 400 (malformed JSON included)
        errors = e.errors()
        parts, param = [], None
        for err in errors[:3]:
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            param = param or (loc[0] if loc else None)
            parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        msg = "; ".join(parts) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        if errors and errors[0].get("type") == "json_invalid":
            msg, param = f"malformed JSON body: {errors[0].get('ctx', {}).get('error', 'cannot parse')}", None
        return error_response(APIError(msg[:1000], 400, param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> Response:
        return error_response(APIError(str(e.detail), e.status_code), e.headers)

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(APIError(f"internal error: {e!r}", 500))


def error_response(e: APIError, headers: dict[str, str] | None = None) -> Response:
    return Response(e.json(), e.status, headers=headers, media_type="application/json")


def _tokenizer_info(serving: OpenAIServing) -> dict[str, Any]:
    """The tokenizer's config, JSON-safe, as vLLM's /tokenizer_info gives it (lm-eval's
    remote tokenizer reads eos/bos/pad tokens and the chat template from here)."""
    tok = serving.tokenizer

    def jsonable(v: Any) -> Any:
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        if isinstance(v, (list, tuple)):
            return [jsonable(x) for x in v]
        if isinstance(v, dict):
            return {str(k): jsonable(x) for k, x in v.items()}
        return getattr(v, "content", None)  # AddedToken -> its text; anything else -> null

    info = {k: jsonable(v) for k, v in tok.init_kwargs.items()}
    info.update(tokenizer_class=type(tok).__name__, chat_template=tok.chat_template,
                eos_token=tok.eos_token, bos_token=tok.bos_token, pad_token=tok.pad_token, unk_token=tok.unk_token,
                model_max_length=serving.max_model_len)
    return info
