"""lm-evaluation-harness model adapter for the embedded engine (`--model llmpress`).

Tokenisation and the context/continuation split are lm-eval's own (TemplateLM), so a
request is scored on exactly the tokens lm-eval's `hf` model scores; the engine then
returns each continuation token's log-probability from one prefill (prompt_logprobs),
with continuous batching across requests. Conventions follow lm-eval's `hf` model:
no BOS added unless `add_bos_token`, BOS (else EOS) as the prefix for empty contexts,
over-long inputs left-truncated to the model's context, rolling windows for
perplexity-style tasks, `until` strings and EOS as stops for generation.
"""
from __future__ import annotations

from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..chat_template import render_chat
from ..engine import LLM, SamplingParams


@register_model("llmpress")
class EngineLM(TemplateLM):
    def __init__(self, pretrained: str = "default", llm: LLM | None = None, max_length: int | None = None,
                 add_bos_token: bool = False, max_gen_toks: int = 256, batch_size: int | str = 1, **engine_kwargs: Any):
        super().__init__()
        self.llm = llm or LLM(str(pretrained), **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        # lm-eval's max_length counts the tokens the model reads; a scored window is one more
        # token (its first has no prediction) and the engine wants room for one generated token.
        self._max_length = min(max_length or 1 << 30, self.llm.engine.max_model_len - 2)
        self.add_bos_token = add_bos_token
        self.max_gen_toks = max_gen_toks
        self.pretrained = str(pretrained)

    # -- what TemplateLM needs ------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=special)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                           continue_final_message=not add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template is not False and chat_template is not None else None

    # -- scoring ---------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation), context_enc, continuation_enc)] -> [(logprob, is_greedy)].

        Requests that share a context and each continue it by one token (multiple choice:
        " A".." D") are scored from one prefill of the context; the rest go through the
        engine's batch with prompt_logprobs."""
        res: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, ctx, cont) in enumerate(requests):
            if len(cont) == 1 and ctx:
                groups.setdefault(tuple(ctx[-self.max_length:]), []).append(i)
        shared = {i for idx in groups.values() if len(idx) > 1 for i in idx}
        for ctx, idx in groups.items():
            if len(idx) > 1:
                lp = self.llm.engine.next_token_logprobs(list(ctx))
                best = int(lp.argmax())
                for i in idx:
                    tok = requests[i][2][0]
                    res[i] = (float(lp[tok]), tok == best)
        rest = [i for i in range(len(requests)) if i not in shared]
        for i, r in zip(rest, self._batched([requests[i] for i in rest], disable_tqdm)):
            res[i] = r
        return res

    def _batched(self, requests, disable_tqdm: bool) -> list[tuple[float, bool]]:
        prompts, spans = [], []
        for _, ctx, cont in requests:
            ids = (ctx + cont)[-(self.max_length + 1):]  # left-truncate as lm-eval's hf model does
            prompts.append({"prompt_token_ids": ids})
            spans.append((len(ids) - len(cont), cont))
        if not prompts:
            return []
        params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
        outs = self.llm.generate(prompts, params, use_tqdm=not disable_tqdm)
        res = []
        for out, (start, cont) in zip(outs, spans):
            lps = [out.prompt_logprobs[start + j][tok] for j, tok in enumerate(cont)]
            res.append((sum(lp.logprob for lp in lps), all(lp.rank == 1 for lp in lps)))
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood over disjoint windows of max_length tokens (lm-eval's scheme)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None, None), ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += ll
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts, params = [], []
        for context, gen_kwargs in (req.args for req in requests):
            kw = dict(gen_kwargs)
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eos = self.tok_decode([self.eot_token_id])
            if eos not in until:
                until.append(eos)
            max_gen = int(kw.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 0.0)) if do_sample else 0.0
            ids = self.tok_encode(context)
            ids = ids[-(self.max_length - max_gen):] if len(ids) + max_gen > self.max_length else ids
            prompts.append({"prompt_token_ids": ids})
            params.append(SamplingParams(temperature=temperature, top_p=float(kw.pop("top_p", 1.0)), max_tokens=max_gen,
                                         stop=until, seed=kw.pop("seed", None)))
        outs = self.llm.generate(prompts, params, use_tqdm=not disable_tqdm)
        texts = []
        for out, p in zip(outs, params):
            text = out.outputs[0].text
            for s in p.stop_strings:  # the engine already stops at these; trim any that a detokeniser straddled
                text = text.split(s)[0] if s else text
            texts.append(text)
        return texts
