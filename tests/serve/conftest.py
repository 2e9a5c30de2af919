"""The real server (uvicorn + the app + an LLMEngine on the tiny random Llama) on a free
local port, in a thread of the test process so tests can look at the engine's KV
blocks; and a reference engine to compare answers with."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from llmpress.engine import LLM, EngineConfig, LLMEngine

MODEL = "tiny-llama"
ENGINE_KW = dict(kv_cache_memory_bytes=64 << 20, max_model_len=512)


@dataclass
class Server:
    url: str
    engine: LLMEngine
    app: object

    def openai(self, api_key: str = "unused", **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kw)

    def async_openai(self, **kw):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60, **kw)


@contextmanager
def run_server(engine: LLMEngine, **app_kw) -> Iterator[Server]:
    import uvicorn

    from llmpress.serve.app import create_app

    app = create_app(engine, [MODEL, "tiny"], **app_kw)
    # A pre-bound socket: no race for a "free" port. proto must say TCP, or asyncio skips
    # TCP_NODELAY on accepted connections and every response waits out a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the server did not start")
    try:
        yield Server(f"http://127.0.0.1:{port}", engine, app)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.01)


@pytest.fixture(scope="session")
def start_server() -> Callable:
    """run_server, for tests that need a server of their own (API key, tiny queue)."""
    return run_server


@pytest.fixture(scope="session")
def server(tiny_llama) -> Iterator[Server]:
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), max_num_seqs=8, **ENGINE_KW))
    with run_server(engine, max_queue=64) as s:
        yield s


@pytest.fixture(scope="session")
def ref(tiny_llama) -> LLM:
    """The same model driven directly: what the server must reproduce."""
    return LLM(str(tiny_llama), **ENGINE_KW)


@pytest.fixture()
def idle(server: Server) -> Iterator[Server]:
    """The shared server, checked idle with every KV block free after the test."""
    yield server
    e = server.engine
    wait_for(lambda: not e.has_unfinished() and e.blocks.num_free == e.blocks.num_blocks, 10,
             f"engine not idle after the test: {e.blocks.num_free}/{e.blocks.num_blocks} blocks free")
