"""`llmpress serve`: an OpenAI-compatible HTTP server (vLLM's routes and behaviour) over
the embedded engine, or a launcher for vLLM's own server.

Modules: protocol (wire models), async_engine (the engine thread), serving /
completions / chat (the two generation endpoints), metrics (Prometheus text), app
(routes, auth, errors), launch (uvicorn or vLLM).
"""
from .launch import ServeOptions, run

__all__ = ["ServeOptions", "run"]
