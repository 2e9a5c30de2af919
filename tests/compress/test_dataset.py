import json

import pytest
from transformers import AutoTokenizer

from llmpress.compress.dataset import DatasetError, calibration_samples, iter_json_array, load_rows, sharegpt_path, to_messages


def test_truncated_json_array_yields_complete_items(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('[{"a": 1}, {"b": [1, 2]},\n {"c": "unfinish')
    assert list(iter_json_array(p)) == [{"a": 1}, {"b": [1, 2]}]


def test_sharegpt_roles_map_to_chat_roles():
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}, {"from": "gpt", "value": ""}]}
    assert to_messages(row) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_samples_are_chat_templated_truncated_and_seeded(default_model, calib_file):
    tok = AutoTokenizer.from_pretrained(default_model)
    a = calibration_samples(str(calib_file), tok, 5, 40, seed=1)
    b = calibration_samples(str(calib_file), tok, 5, 40, seed=1)
    c = calibration_samples(str(calib_file), tok, 5, 40, seed=2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    assert all(x.shape[1] == 40 for x in a)
    text = tok.decode(a[0][0])
    assert text.startswith("<|im_start|>system") and "<|im_start|>user" in text


def test_packaged_sharegpt_parses():
    rows, name = load_rows("sharegpt")
    assert sharegpt_path().is_file() and "ShareGPT" in name
    assert len(rows) > 15000  # 17,671 complete conversations in the truncated dump, minus empty ones
    assert all(m[0]["role"] in ("user", "system") or any(x["role"] == "user" for x in m) for m in rows[:100])


def test_text_rows_are_accepted(tmp_path, default_model):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"plain text sample number {i} " * 5}) for i in range(3)))
    tok = AutoTokenizer.from_pretrained(default_model)
    assert len(calibration_samples(str(p), tok, 3, 16)) == 3
    with pytest.raises(DatasetError, match="only 3 usable"):
        calibration_samples(str(p), tok, 4, 16)
