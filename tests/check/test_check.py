"""`llmpress check`: every checkpoint compress makes here passes it, and each planted fault (a NaN or
zero scale, an all-zero or saturated group, an uncalibrated module, a corrupted config group, a
non-finite norm, weights shuffled against the base) fails it, naming where; compress keeps a failing
checkpoint beside its output, marked, and the CLI says so in one line."""
import json
import shutil

import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import load_file, save_file

from llmpress.check import CheckConfig, check
from llmpress.check import faults
from llmpress.checkpoint.compressed_tensors import pack_int, unpack_int
from llmpress.cli import main
from llmpress.compress import Recipe, compress

MOD = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def base(tmp_path_factory, default_model):
    """A tiny Llama whose next-token choice depends on its layers: untied and with a sharp lm_head (the
    conftest model's tied embeddings make it predict mostly from the current token, whatever its layers do,
    and a flat distribution hides a broken model: shuffled weights measured KL 0.5 with lm_head x8, 4.3 x24)."""
    src = make_tiny_model("llama", tmp_path_factory.mktemp("check") / "base", default_model, tie_word_embeddings=False)
    for f in src.glob("*.safetensors"):
        t = load_file(f)
        t["lm_head.weight"] = t["lm_head.weight"] * 24
        save_file(t, f, metadata={"format": "pt"})
    return src


def _recipe(calib_file, scheme: str) -> Recipe:
    return Recipe(scheme=scheme, group_size=32, num_samples=4, max_seq_len=64, dataset=str(calib_file), dtype="float32")


@pytest.fixture(scope="module")
def good(base, calib_file, tmp_path_factory):
    """Checkpoints compress wrote, so they passed its gate (KL vs the base included)."""
    root = tmp_path_factory.mktemp("good")
    return {s: compress(base, _recipe(calib_file, s), root / s, progress=False) for s in ("W4A16", "W8A8", "FP8_DYNAMIC")}


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _edit(folder, fn):
    """Apply fn(name, tensor) -> tensor to every stored tensor."""
    for f in folder.glob("*.safetensors"):
        t = load_file(f)
        save_file({k: fn(k, v) for k, v in t.items()}, f, metadata={"format": "pt"})


def _faults(folder, **kw):
    r = check(CheckConfig(str(folder), **kw))
    return r, {(f.check, f.where) for f in r.faults}


@pytest.mark.parametrize("scheme", ["W4A16", "W8A8", "FP8_DYNAMIC"])
def test_every_good_checkpoint_passes_with_its_base(good, base, scheme):
    report = json.loads((good[scheme] / "check.json").read_text())  # what compress's gate wrote
    assert report["passed"] and report["quality"]["kl_divergence"] < report["quality"]["max_kl"]
    r = check(CheckConfig(str(good[scheme]), base=str(base)))
    assert r.passed, r.faults
    assert r.modules == 14 and r.groups > 0


def test_calibration_counts_are_recorded_per_module(good):
    rec = json.loads((good["W4A16"] / "llmpress_compress.json").read_text())
    assert len(rec["calibration_tokens"]) == 14 and min(rec["calibration_tokens"].values()) > 0
    assert "calibration_tokens" not in json.loads((good["FP8_DYNAMIC"] / "llmpress_compress.json").read_text())


@pytest.mark.parametrize("value,what", [(float("nan"), "non-finite"), (0.0, "zero")])
def test_planted_bad_scale(good, tmp_path, value, what):
    ck = _copy(good["W4A16"], tmp_path)
    _edit(ck, lambda k, v: v.index_fill(0, torch.tensor([3]), value) if k == f"{MOD}.weight_scale" else v)
    r, found = _faults(ck)
    assert found == {("scales", MOD)} and what in r.faults[0].detail


@pytest.mark.parametrize("code,what", [(0, "all-zero"), (7, "saturated")])
def test_planted_zero_or_saturated_group(good, tmp_path, code, what):
    ck = _copy(good["W4A16"], tmp_path)

    def plant(k, v):
        if k != f"{MOD}.weight_packed":
            return v
        q = unpack_int(v, 4, 128, dim=1)
        q[5, 32:64] = code  # row 5, second group of 32
        if code:
            q[5, 32:48] = -8
        return pack_int(q, 4, dim=1)

    _edit(ck, plant)
    r, found = _faults(ck)
    assert found == {("groups", MOD)} and r.faults[0].detail.startswith("1 of") and what in r.faults[0].detail


def test_planted_uncalibrated_module(good, tmp_path):
    ck = _copy(good["W4A16"], tmp_path)
    rec = json.loads((ck / "llmpress_compress.json").read_text())
    rec["calibration_tokens"][MOD] = 0
    del rec["calibration_tokens"]["model.layers.0.self_attn.q_proj"]
    (ck / "llmpress_compress.json").write_text(json.dumps(rec))
    r, found = _faults(ck)
    assert found == {("calibration", MOD), ("calibration", "model.layers.0.self_attn.q_proj")}


@pytest.mark.parametrize("corrupt,where", [
    (lambda g: g.update(targets=["Conv2d"]), "group_0"),  # matches nothing, and leaves the stored tensors uncovered
    (lambda g: g["weights"].update(num_bits="four"), "quantization_config"),  # compressed-tensors rejects it
    (lambda g: g["weights"].update(strategy="diagonal"), "quantization_config"),
    (lambda g: g["weights"].update(group_size=64), MOD),  # parses, but the stored scales say 32
])
def test_planted_corrupt_config_group(good, tmp_path, corrupt, where):
    ck = _copy(good["W4A16"], tmp_path)
    cfg = json.loads((ck / "config.json").read_text())
    corrupt(cfg["quantization_config"]["config_groups"]["group_0"])
    (ck / "config.json").write_text(json.dumps(cfg))
    r, found = _faults(ck)
    assert not r.passed and ("config", where) in found


def test_planted_non_finite_norm(good, tmp_path):
    ck = _copy(good["W8A8"], tmp_path)
    key = "model.layers.0.input_layernorm.weight"
    _edit(ck, lambda k, v: v.index_fill(0, torch.tensor([1]), float("inf")) if k == key else v)
    assert _faults(ck)[1] == {("tensors", key)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nonfinite_count_across_slices(dtype):
    t = torch.zeros(3, (1 << 24) // 3 + 7, dtype=dtype)  # the count runs over slices of 2^24 values
    assert faults.nonfinite_count(t) == 0
    t[0, 5], t[2, -1], t[1, 3] = float("nan"), float("inf"), -float("inf")
    assert faults.nonfinite_count(t) == 3 and faults.nonfinite_count(t[:1]) == 1
    assert faults.nonfinite_count(torch.ones(4, dtype=torch.int32)) == 0


@pytest.mark.parametrize("scheme", ["W4A16", "W8A8"])
def test_planted_shuffled_weights_fail_against_the_base(good, base, tmp_path, scheme):
    """Every quantized matrix's codes permuted: each module still looks healthy on its own (same codes,
    scales, groups), so only the comparison with the base can tell."""
    ck = _copy(good[scheme], tmp_path)
    g = torch.Generator().manual_seed(0)
    _edit(ck, lambda k, v: v.flatten()[torch.randperm(v.numel(), generator=g)].view_as(v)
          if k.endswith(("weight_packed", "proj.weight")) else v)
    assert _faults(ck)[0].passed  # structurally fine
    r, found = _faults(ck, base=str(base))
    assert ("quality", "") in found and r.quality["kl_divergence"] > 2 * r.quality["max_kl"]


def test_compress_sets_a_failing_checkpoint_aside(base, calib_file, tmp_path, monkeypatch, capsys):
    """A NaN scale planted in compress's output: the CLI fails in one line, OUTPUT is not created, and
    OUTPUT.failed/ holds the checkpoint with the reason."""
    from llmpress.compress import oneshot

    real = oneshot.compress_linear
    calls = []

    def nan_once(q, scale, zp, scheme):
        calls.append(1)
        if len(calls) == 3:
            scale = scale.clone()
            scale[0, 0] = float("nan")
        return real(q, scale, zp, scheme)

    monkeypatch.setattr(oneshot, "compress_linear", nan_once)
    out = tmp_path / "w4"
    rc = main(["compress", str(base), "--scheme", "W4A16", "--group-size", "32", "--num-samples", "4",
               "--max-seq-len", "64", "--dataset", str(calib_file), "--dtype", "float32", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1].startswith("llmpress compress: error: check failed: scales: model.layers.0.")
    assert "Traceback" not in "\n".join(err)
    failed = tmp_path / "w4.failed"
    assert "non-finite" in (failed / "CHECK_FAILED.txt").read_text()
    assert not json.loads((failed / "check.json").read_text())["passed"]


def test_cli_check_exit_codes_and_bad_input(good, base, tmp_path, capsys):
    assert main(["check", str(good["W8A8"])]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["passed"]
    ck = _copy(good["W8A8"], tmp_path)
    _edit(ck, lambda k, v: torch.full_like(v, float("nan")) if k == f"{MOD}.weight_scale" else v)
    assert main(["check", str(ck)]) == 1
    assert capsys.readouterr().err.strip() == f"llmpress check: check failed: scales: {MOD}: 64 non-finite of 64 weight scales"
    for bad in (str(base), str(tmp_path / "missing"), str(tmp_path)):  # dense model, no folder, no config.json
        assert main(["check", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("llmpress check: error: "), err


def test_group_faults_match_a_loop_reference():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-8, 8, (6, 64), generator=g).float()
    zp = torch.randint(-2, 3, (6, 4), generator=g).float()
    q[1, 16:32] = zp[1, 1]
    q[4, 48:64] = torch.where(torch.rand(16, generator=g) < 0.5, -8.0, 7.0)
    f = faults.group_faults(q, zp, 4, -8, 7)
    for r in range(6):
        for j in range(4):
            grp = q[r, 16 * j: 16 * (j + 1)]
            assert f.all_zero[r, j] == bool((grp == zp[r, j]).all())
            assert f.saturated[r, j] == bool(((grp == -8) | (grp == 7)).all())
    assert f.all_zero.sum() == 1 and f.saturated.sum() == 1
