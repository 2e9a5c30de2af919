"""The offline API, shaped like vLLM's: `LLM(model).generate(prompts, SamplingParams(...))`
and `LLM(model).chat(messages, ...)`, returning RequestOutput / CompletionOutput."""
from __future__ import annotations

from typing import Sequence as Seq

from tqdm.auto import tqdm

from ..chat_template import render_chat
from .llm_engine import EngineConfig, LLMEngine, RequestOutput
from .sampling import SamplingParams

Prompt = str | list[int] | dict


class LLM:
    """An embedded engine over one model folder (dense or compressed-tensors).

    Keyword arguments are EngineConfig's fields: dtype, max_model_len, max_num_seqs,
    max_num_batched_tokens, kv_cache_memory_bytes, block_size, device, seed.
    """

    def __init__(self, model: str = "default", **kwargs):
        self.engine = LLMEngine(EngineConfig.from_args(model, **kwargs))
        self._counter = 0

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> "LLM":
        """The offline API over an engine built elsewhere (say, over a Model made in memory)."""
        llm = cls.__new__(cls)
        llm.engine, llm._counter = engine, 0
        return llm

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion with continuous batching; outputs in input order."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts; pass one or one per prompt")
        ids: list[str] = []
        try:
            for prompt, p in zip(prompts, params):  # validate all before running any
                rid = str(self._counter)
                self._counter += 1
                self.engine.add_request(rid, prompt, p)
                ids.append(rid)
        except Exception:
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generate", disable=not use_tqdm, unit="req")
        try:
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        finally:
            bar.close()
            for rid in ids:
                if rid not in done:
                    self.engine.abort_request(rid)
        return [done[r] for r in ids]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then generate."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tok = self.engine.tokenizer
        prompts = []
        for conv in convs:
            ids = render_chat(tok, conv, tokenize=True, chat_template=chat_template,
                              add_generation_prompt=add_generation_prompt and not continue_final_message,
                              continue_final_message=continue_final_message, **(chat_template_kwargs or {}))
            prompts.append({"prompt_token_ids": list(ids), "prompt": tok.decode(ids)})
        return self.generate(prompts, sampling_params, use_tqdm)
