"""`llmpress eval --print-commands`: the cards' evaluation sentences and lm_eval command
lines for the user's model, plus the lm_eval line equivalent to our offline run."""
from __future__ import annotations

CARD_INTRO = "The model was evaluated on OpenLLM Leaderboard V1 and V2, using the following commands:"


def _lm_eval(model: str, extra: list[str], tasks: str, max_model_len: int) -> str:
    lines = ["lm_eval", "  --model vllm",
             f'  --model_args pretrained="{model}",dtype=auto,max_model_len={max_model_len},tensor_parallel_size=1,enable_chunked_prefill=True',
             *extra, f"  --tasks {tasks}", "  --write_out", "  --batch_size auto", "  --output_path output_dir", "  --show_config"]
    return " \\\n".join(lines)


def card_commands(model: str, max_model_len: int = 4096) -> str:
    """The three sentences of the cards' Evaluation section, for `model`."""
    return "\n\n".join([
        CARD_INTRO,
        "OpenLLM Leaderboard V1:\n\n" + _lm_eval(model, [], "openllm", max_model_len),
        "OpenLLM Leaderboard V2:\n\n" + _lm_eval(model, ["  --apply_chat_template", "  --fewshot_as_multiturn"], "leaderboard", max_model_len),
    ])


def offline_equivalent(model: str, tasks: list[str], include_path: str, limit: int | None, chat: bool) -> str:
    """lm_eval on our offline task YAMLs (vLLM backend), scoring what `llmpress eval` scores."""
    extra = [f"  --include_path {include_path}"] + ([f"  --limit {limit}"] if limit else []) + (["  --apply_chat_template"] if chat else [])
    return _lm_eval(model, extra, ",".join(tasks), 2048)
