import math

import torch

from llmpress.corpus import held_text
from llmpress.eval.perplexity import perplexity


def test_model_against_itself_has_zero_kl_and_full_agreement(tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    r = perplexity(tiny_llama, tiny_llama, text, window=64, max_tokens=300, progress=False)
    assert r.tokens == 300 - math.ceil(300 / 64)  # the first token of each window has no prediction
    assert abs(r.kl_divergence) < 1e-5 and r.top1_agreement == 1.0
    assert math.isclose(r.perplexity, r.base_perplexity, rel_tol=1e-6)


def test_perplexity_equals_exp_mean_nll(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tmp_path / "t.txt"
    text.write_text("One two three four five six seven eight nine ten. " * 10)
    r = perplexity(tiny_llama, None, text, window=1000, max_tokens=None, progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = torch.tensor([tok(text.read_text().strip(), add_special_tokens=False)["input_ids"]])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert math.isclose(r.perplexity, math.exp(loss), rel_tol=1e-4)


def test_lee_corpus_is_available():
    text, name = held_text()
    assert "Lee" in name and len(text.split()) > 50000
