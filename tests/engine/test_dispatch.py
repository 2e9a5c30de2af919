"""The linear weights' row thresholds (linear.py: small_m_max, amx_m, measured on a 2-core host) and
their overrides, LLMPRESS_SMALL_M_MAX and LLMPRESS_AMX_M: taken by every format, and a bad value is
refused with one line naming the variable, the value and the fix."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from llmpress.checkpoint.compressed_tensors import compress_linear
from llmpress.compress.observers import minmax_qparams
from llmpress.engine import extension, linear
from llmpress.engine.linear import DispatchSettingError, parse_dispatch
from llmpress.quant import QuantArgs, Scheme, quantize

FAST = extension.available()


def test_unset_keeps_the_measured_defaults():
    assert parse_dispatch({}) == (None, None)
    assert parse_dispatch({"LLMPRESS_SMALL_M_MAX": " ", "LLMPRESS_AMX_M": ""}) == (None, None)


def test_overrides_parse():
    assert parse_dispatch({"LLMPRESS_SMALL_M_MAX": "0"}) == (0, None)
    assert parse_dispatch({"LLMPRESS_SMALL_M_MAX": "64", "LLMPRESS_AMX_M": "2, 128"}) == (64, (2, 128))


@pytest.mark.parametrize("var,value", [("LLMPRESS_SMALL_M_MAX", "abc"), ("LLMPRESS_SMALL_M_MAX", "-1"),
                                       ("LLMPRESS_SMALL_M_MAX", "1.5"), ("LLMPRESS_AMX_M", "8"),
                                       ("LLMPRESS_AMX_M", "0,4"), ("LLMPRESS_AMX_M", "9,8"),
                                       ("LLMPRESS_AMX_M", "a,b"), ("LLMPRESS_AMX_M", "1,2,3")])
def test_bad_value_is_refused_in_one_line(var, value):
    with pytest.raises(DispatchSettingError) as e:
        parse_dispatch({var: value})
    msg = str(e.value)
    assert "\n" not in msg and f"{var}={value!r}" in msg and "unset" in msg


@pytest.fixture
def overrides(monkeypatch):
    """Set the variables for weights built inside the test (the process reads them once: re-read here)."""
    def set_(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        linear.dispatch_overrides.cache_clear()
    yield set_
    monkeypatch.delenv("LLMPRESS_SMALL_M_MAX", raising=False)
    monkeypatch.delenv("LLMPRESS_AMX_M", raising=False)
    linear.dispatch_overrides.cache_clear()


def _int4_weight(n=96, k=128) -> linear.QuantizedWeight:
    """A W4A16 g64 weight [n, k] as compress writes it."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.05
    args = QuantArgs(4, "int", True, "group", 64)
    scale, zp = minmax_qparams(w, args, torch.bfloat16)
    tensors = compress_linear(quantize(w, scale, zp, args), scale, zp, Scheme("test", args, None))
    return linear.make_weight(tensors, args, None)


@pytest.mark.skipif(not FAST, reason="the thresholds choose between the extension's paths")
@pytest.mark.parametrize("limit", [0, 3, 200])
def test_override_moves_the_crossover_and_keeps_the_product(overrides, limit):
    overrides(LLMPRESS_SMALL_M_MAX=str(limit), LLMPRESS_AMX_M="1,2")
    w = _int4_weight()
    assert w.small_m_max == limit and w.amx_m == (1, 2)
    x = torch.randn(5, 128)
    torch.testing.assert_close(w(x), w.reference(x), rtol=1e-4, atol=1e-4)  # fused, AMX or prefill: same product


def test_defaults_come_back_unset(overrides):
    overrides()
    w = _int4_weight()
    assert w.amx_m == linear.Int4Weight.amx_m
    assert w.small_m_max in (linear.Int4Weight.small_m_max, linear.Int4Weight.small_m_max_wide)


def test_cli_refuses_a_bad_value_before_loading(tiny_llama):
    env = {**os.environ, "LLMPRESS_SMALL_M_MAX": "lots"}
    r = subprocess.run([sys.executable, "-m", "llmpress.cli", "generate", str(tiny_llama), "hi", "--max-tokens", "1"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "LLMPRESS_SMALL_M_MAX='lots'" in lines[0] and "Traceback" not in r.stderr
