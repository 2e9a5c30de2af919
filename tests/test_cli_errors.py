"""Bad input gets one line naming the value and the fix (exit code 2), never a traceback."""
import json

import pytest

from llmpress.cli import main


def _err(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_unknown_scheme(capsys, tiny_llama, tmp_path):
    err = _err(capsys, ["compress", str(tiny_llama), "--scheme", "W3A7", "--output", str(tmp_path / "o")])
    assert "W3A7" in err and "W4A16" in err and "FP8_DYNAMIC" in err


def test_unknown_recipe_key_names_line(capsys, tiny_llama, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("scheme: W8A8\nnum_samples: 4\ngroupsize: 64\n")
    err = _err(capsys, ["compress", str(tiny_llama), "--recipe", str(r), "--output", str(tmp_path / "o")])
    assert "r.yaml:3" in err and "groupsize" in err and "group_size" in err


def test_recipe_bad_scheme_names_line(capsys, tiny_llama, tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("num_samples: 4\nscheme: INT3\n")
    err = _err(capsys, ["compress", str(tiny_llama), "--recipe", str(r), "--output", str(tmp_path / "o")])
    assert "r.yaml:2" in err and "INT3" in err


def test_group_size_not_dividing_names_layers(capsys, default_model, tmp_path):
    # SmolLM2: hidden 576 is not a multiple of 128 (W4A16's default group)
    err = _err(capsys, ["compress", str(default_model), "--scheme", "W4A16", "--output", str(tmp_path / "o")])
    assert "group_size 128" in err and "q_proj" in err and "576" in err and "group_size: 64" in err and "ignore" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("n", ["0", "-3"])
def test_num_samples_not_positive(capsys, tiny_llama, tmp_path, n):
    err = _err(capsys, ["compress", str(tiny_llama), "--num-samples", n, "--output", str(tmp_path / "o")])
    assert "num_samples" in err and n in err


def test_num_samples_more_than_dataset(capsys, tiny_llama, calib_file, tmp_path):
    err = _err(capsys, ["compress", str(tiny_llama), "--group-size", "64", "--num-samples", "100",
                        "--dataset", str(calib_file), "--output", str(tmp_path / "o")])
    assert "num_samples=100" in err and "24" in err and "--num-samples" in err
    assert not (tmp_path / "o").exists()


def test_not_a_decoder_only_model(capsys, tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=100).save_pretrained(tmp_path / "t5")
    err = _err(capsys, ["compress", str(tmp_path / "t5"), "--output", str(tmp_path / "o")])
    assert "encoder-decoder" in err and "decoder-only" in err


def test_folder_without_safetensors(capsys, tiny_llama, tmp_path):
    d = tmp_path / "nosafe"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    err = _err(capsys, ["compress", str(d), "--group-size", "64", "--output", str(tmp_path / "o")])
    assert "safetensors" in err and "pytorch_model.bin" in err and "pickle" in err


def test_not_a_model_folder(capsys, tmp_path):
    err = _err(capsys, ["compress", str(tmp_path), "--output", str(tmp_path / "o")])
    assert "config.json" in err


def test_output_exists_is_kept(capsys, tiny_llama, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    err = _err(capsys, ["compress", str(tiny_llama), "--group-size", "64", "--output", str(out)])
    assert "--overwrite" in err and (out / "keep.txt").read_text() == "precious"


def test_calibration_file_without_conversations(capsys, tiny_llama, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"foo": 1}, {"messages": [{"role": "assistant", "content": "hi"}]}, {"text": "  "}]))
    err = _err(capsys, ["compress", str(tiny_llama), "--group-size", "64", "--dataset", str(f), "--output", str(tmp_path / "o")])
    assert "no usable conversations" in err and "messages" in err


def test_unknown_dataset_source(capsys, tiny_llama, tmp_path):
    err = _err(capsys, ["compress", str(tiny_llama), "--group-size", "64", "--dataset", "nope.parquet", "--output", str(tmp_path / "o")])
    assert "nope.parquet" in err and "sharegpt" in err


def test_overwrite_refuses_a_folder_llmpress_did_not_write(tiny_llama, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    p = subprocess.run([sys.executable, "-m", "llmpress.cli", "compress", str(tiny_llama), "--group-size", "64",
                        "--output", str(out), "--overwrite"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "not written by llmpress" in p.stderr and "notes.txt" in p.stderr
    assert (out / "notes.txt").read_text() == "precious"
