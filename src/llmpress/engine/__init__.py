"""The embedded engine: a compact Llama-family model over quantized CPU kernels, a
paged KV cache, continuous batching with chunked prefill, and vLLM's offline API."""
from .llm_engine import CompletionOutput, EngineConfig, LLMEngine, Logprob, RequestOutput
from .llm import LLM
from .sampling import SamplingError, SamplingParams

__all__ = ["LLM", "LLMEngine", "EngineConfig", "SamplingParams", "SamplingError", "RequestOutput", "CompletionOutput", "Logprob"]
