"""FP8-dynamic (the cards' FP8 scheme): e4m3 weights with one scale per output
channel, activations quantized per token at run time by the engine, so no
calibration data is needed. Scale = amax / 448, the largest finite e4m3 value.
"""
from __future__ import annotations

import torch

from ..quant import SCHEMES, QuantArgs, quantize
from .observers import minmax_qparams

FP8_WEIGHTS: QuantArgs = SCHEMES["FP8_DYNAMIC"].weights


def fp8_quantize_weight(
    W: torch.Tensor, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (float8_e4m3fn [out, in], scale [out, 1])."""
    scale, _ = minmax_qparams(W, FP8_WEIGHTS, scale_dtype)
    return quantize(W, scale, None, FP8_WEIGHTS), scale
