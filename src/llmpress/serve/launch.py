"""`llmpress serve`: uvicorn over the embedded engine, or vLLM's own OpenAI server.

`--engine vllm` replaces this process with `python -m vllm.entrypoints.openai.api_server`
(same flags, mapped), so signals, exit codes and logs are vLLM's own.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("llmpress.serve")

GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long to finish before they are cancelled


@dataclass
class ServeOptions:
    model: str = "default"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 32
    kv_cache_memory_bytes: int | None = None
    dtype: str = "auto"
    prefill_dtype: str = "auto"  # the embedded engine's (EngineConfig.prefill_dtype); vLLM has none
    engine: str = "embedded"
    served_model_name: str | None = None
    max_queue: int = 256
    # vLLM's common flags: passed through unchanged with --engine vllm; on the embedded engine
    # honoured where they apply (check_embedded refuses the rest, saying why)
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    chat_template: str | None = None
    seed: int | None = None
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool = False
    quantization: str | None = None
    max_num_batched_tokens: int | None = None


VLLM_PASSTHROUGH = ("tensor_parallel_size", "gpu_memory_utilization", "chat_template", "seed", "quantization",
                    "max_num_batched_tokens")


def check_embedded(o: ServeOptions) -> None:
    """Refuse the vLLM flags the embedded engine cannot honour, each with the reason and the way out."""
    why = []
    if o.tensor_parallel_size not in (None, 1):
        why.append(f"--tensor-parallel-size {o.tensor_parallel_size}: the embedded engine runs on one device")
    if o.gpu_memory_utilization is not None:
        why.append("--gpu-memory-utilization: the embedded engine sizes its KV cache in bytes: "
                   "use --kv-cache-memory-bytes")
    if o.enable_prefix_caching:
        why.append("--enable-prefix-caching: the embedded engine has no prefix cache")
    if o.trust_remote_code:
        why.append("--trust-remote-code: the embedded engine runs no model code from the hub "
                   "(Llama, Mistral, Qwen2 only)")
    if o.quantization not in (None, "compressed-tensors"):
        why.append(f"--quantization {o.quantization}: the embedded engine reads compressed-tensors "
                   "checkpoints (the format is taken from config.json; leave the flag out)")
    if why:
        raise ValueError("; ".join(why) + "; or use --engine vllm")


def read_chat_template(value: str) -> str:
    """vLLM's --chat-template: a file, or the template itself."""
    p = Path(value).expanduser()
    if p.is_file():
        return p.read_text()
    if "{" in value:
        return value
    raise ValueError(f"--chat-template {value}: no such file (give a Jinja file or the template text)")


def served_names(model_arg: str, path: Path, served: str | None) -> list[str]:
    """The id /v1/models lists (the folder name unless --served-model-name) first; the
    model argument as given is accepted as an alias, as vLLM accepts its --model."""
    names = [served or path.name]
    if model_arg not in names:
        names.append(model_arg)
    return names


def vllm_argv(o: ServeOptions, model_path: Path) -> list[str]:
    """Our flags in vLLM's spelling. --max-queue has no vLLM counterpart (vLLM queues
    without a bound), so it is dropped with a warning by the caller."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
            "--host", o.host, "--port", str(o.port), "--dtype", o.dtype, "--max-num-seqs", str(o.max_num_seqs)]
    if o.api_key:
        argv += ["--api-key", o.api_key]
    if o.max_model_len:
        argv += ["--max-model-len", str(o.max_model_len)]
    if o.kv_cache_memory_bytes:
        argv += ["--kv-cache-memory-bytes", str(o.kv_cache_memory_bytes)]
    for name in VLLM_PASSTHROUGH:
        if (v := getattr(o, name)) is not None:
            argv += ["--" + name.replace("_", "-"), str(v)]
    if o.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if o.enable_prefix_caching else "--no-enable-prefix-caching")
    if o.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv + ["--served-model-name", *served_names(o.model, model_path, o.served_model_name)]  # nargs="+": last


def run(o: ServeOptions) -> int:
    from ..models import resolve_model

    if o.max_queue < 0:
        raise ValueError(f"--max-queue={o.max_queue}: must be >= 0")
    path = resolve_model(o.model)
    if o.engine == "vllm":
        if o.prefill_dtype != "auto":
            raise ValueError(f"--prefill-dtype {o.prefill_dtype}: an embedded-engine CPU setting; vLLM runs every "
                             "GEMM in --dtype (leave --prefill-dtype out)")
        return _exec_vllm(o, path)
    if o.engine != "embedded":
        raise ValueError(f"--engine={o.engine!r}: choose embedded or vllm")
    check_embedded(o)
    return _run_embedded(o, path)


def _exec_vllm(o: ServeOptions, path: Path) -> int:
    if importlib.util.find_spec("vllm") is None:
        print("llmpress serve: error: --engine vllm needs vLLM, which is not installed here "
              "(pip install vllm, on a machine with a supported GPU); or use --engine embedded", file=sys.stderr)
        return 2
    if o.max_queue != ServeOptions.max_queue:
        print("llmpress serve: warning: vLLM has no queue bound; --max-queue is ignored", file=sys.stderr)
    argv = vllm_argv(o, path)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # does not return
    return 0


def _run_embedded(o: ServeOptions, path: Path) -> int:
    import uvicorn

    from ..engine import EngineConfig, LLMEngine
    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    template = read_chat_template(o.chat_template) if o.chat_template else None
    engine = LLMEngine(EngineConfig.from_args(path, max_model_len=o.max_model_len, max_num_seqs=o.max_num_seqs,
                                              kv_cache_memory_bytes=o.kv_cache_memory_bytes, dtype=o.dtype, seed=o.seed,
                                              prefill_dtype=o.prefill_dtype,
                                              max_num_batched_tokens=o.max_num_batched_tokens))
    names = served_names(o.model, path, o.served_model_name)
    if not o.api_key and not _is_loopback(o.host):
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", o.host)
    log.info("serving %s as %r on http://%s:%d (max_model_len %d, %d KV blocks of %d tokens, max_num_seqs %d)",
             path, names[0], o.host, o.port, engine.max_model_len, engine.blocks.num_blocks,
             engine.config.block_size, o.max_num_seqs)
    app = create_app(engine, names, api_key=o.api_key, max_queue=o.max_queue, chat_template=template)
    config = uvicorn.Config(app, host=o.host, port=o.port, log_level="info",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    logging.getLogger("uvicorn.error").addFilter(_one_line_cancellations)  # after Config: it configures logging
    server = _server_class(uvicorn)(config)
    server.run()  # uvicorn re-raises Ctrl-C after its graceful shutdown: cli.main prints one line, exits 130
    return 0 if server.started else 1  # e.g. the port is taken (uvicorn logged why)


def _one_line_cancellations(record: logging.LogRecord) -> bool:
    """Requests still running when the graceful shutdown times out are cancelled; uvicorn logs a
    traceback for each. One line says the same."""
    import asyncio

    if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
        record.msg, record.args = f"a request in flight was cancelled at shutdown (after {GRACEFUL_SHUTDOWN_S} s)", ()
        record.exc_info = record.exc_text = None
    return True


def _server_class(uvicorn):
    class Server(uvicorn.Server):
        """A second Ctrl-C (during the graceful shutdown) ends the process at once with one line:
        uvicorn's own force quit cancels the requests in flight and logs a traceback for each."""

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                print("\nllmpress serve: interrupted again: exiting without waiting for the requests in flight",
                      file=sys.stderr, flush=True)
                os._exit(130)
            super().handle_exit(sig, frame)

    return Server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
