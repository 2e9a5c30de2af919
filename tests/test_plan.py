"""llmpress plan: the shapes it reads, its predictions against a measured compress, and the
up-front checks in compress() and LLMEngine that refuse runs that cannot fit."""
from __future__ import annotations

import json

import pytest

from llmpress import plan
from llmpress.cli import main
from llmpress.synth import load_config

CFG_8B, _ = load_config("deepseek-r1-distill-llama-8b")


def test_8b_shape_numbers():
    s = plan.Shape.from_config(CFG_8B)
    # Llama 3.1 8B: 4096 x (4096 + 2 x 1024) + 4096 x 4096 + 3 x 4096 x 14336 per layer; 8.03B in all
    assert s.layer_linear_params == 218_103_808
    total = s.layer_linear_params * s.layers + 2 * s.embed_params + (2 * s.layers + 1) * s.hidden
    assert total == 8_030_261_248
    w4 = plan.output_bytes(s, plan.CompressRun(scheme="W4A16", group_size=128))
    fp8 = plan.output_bytes(s, plan.CompressRun(scheme="FP8_DYNAMIC", group_size=None))
    assert 5.6e9 < w4 < 5.8e9 and 9.0e9 < fp8 < 9.2e9  # Neural Magic's W4A16 / FP8 8B checkpoints: 5.7 / 9.1 GB


def test_peak_grows_with_calibration_size_and_fits_check():
    m = plan.Machine("test", 24 << 30, None, 2, 1e11)
    small = plan.plan_compress(CFG_8B, plan.CompressRun(num_samples=32, max_seq_len=512, calib_bytes=2), m)
    big = plan.plan_compress(CFG_8B, plan.CompressRun(num_samples=512, max_seq_len=2048, calib_bytes=2), m)
    assert big.peak_ram > small.peak_ram + 512 * 2048 * (2 * 4096 + 14336) * 2 // 2
    plan.check(small, m, "fix")
    with pytest.raises(plan.PlanError, match="num-samples|fix"):
        plan.check(big, m, "lower --num-samples")
    fp8 = plan.plan_compress(CFG_8B, plan.CompressRun(scheme="FP8_DYNAMIC", group_size=None, gptq=False), m)
    assert fp8.peak_ram < small.peak_ram and fp8.wall_s < small.wall_s


def test_compress_that_cannot_fit_fails_before_work(capsys, tiny_llama, calib_file, tmp_path, monkeypatch):
    monkeypatch.delenv("LLMPRESS_SKIP_PLAN", raising=False)
    argv = ["compress", str(tiny_llama), "--group-size", "64", "--num-samples", "100000", "--max-seq-len", "100000",
            "--dataset", str(calib_file), "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "GB of RAM" in err and "available" in err and "--num-samples" in err and "LLMPRESS_SKIP_PLAN=1" in err
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setenv("LLMPRESS_SKIP_PLAN", "1")  # the escape hatch: past the plan, to the next check
    assert main(argv) == 2
    assert "num_samples=100000" in capsys.readouterr().err


def test_engine_that_cannot_fit_fails_before_loading(tiny_llama, monkeypatch):
    from llmpress import LLM

    monkeypatch.delenv("LLMPRESS_SKIP_PLAN", raising=False)
    with pytest.raises(plan.PlanError, match="kv-cache-memory-bytes.*LLMPRESS_SKIP_PLAN"):
        LLM(str(tiny_llama), kv_cache_memory_bytes=1 << 50)


def test_cli_plan_for_the_8b_config(capsys):
    assert main(["plan", "deepseek-r1-distill-llama-8b", "--scheme", "W4A16", "--group-size", "128",
                 "--num-samples", "32", "--max-seq-len", "512", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    d = json.loads(out.strip().splitlines()[-1])
    assert d["what"] == "compress W4A16" and 5.6 < d["disk_gb"] < 5.8 and d["peak_ram_gb"] > 3 and d["wall_s"] > 0
    assert "peak RAM" in out and "wall time" in out
    assert main(["plan", "deepseek-r1-distill-llama-8b", "--engine", "--kv-cache-memory-bytes", str(1 << 30)]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["what"] == "engine" and 16 < d["terms_gb"]["weights"] < 16.2
    assert main(["plan", "deepseek-r1-distill-llama-8b", "--scheme", "W4A16", "--gpu", "H200"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["peak_device_gb"] is not None


def test_float32_work_is_timed_at_the_float32_rate():
    """GPTQ's factorizations and updates run in float32, the bf16 calibration forward and its Hessian
    products in bf16: each term follows its own measured rate (5x apart on an AMX Xeon)."""
    run = plan.CompressRun(num_samples=32, max_seq_len=512, calib_bytes=2)
    slow, fast = (plan.Machine("test", 24 << 30, None, 2, 1.3e12, fp32_flops=f) for f in (1.6e11, 3.2e11))
    t_slow, t_fast = (dict(plan.plan_compress(CFG_8B, run, m).time_terms) for m in (slow, fast))
    assert t_slow["GPTQ"] == pytest.approx(2 * t_fast["GPTQ"], rel=0.01)
    assert t_slow["calibration forward"] == t_fast["calibration forward"]
    assert t_slow["Hessians"] == t_fast["Hessians"]
    f32_calib = dict(plan.plan_compress(CFG_8B, plan.CompressRun(num_samples=32, max_seq_len=512, calib_bytes=4), fast).time_terms)
    assert f32_calib["calibration forward"] > 3 * t_fast["calibration forward"]  # float32 calibration: the float32 rate
