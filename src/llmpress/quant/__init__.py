"""quant: the quantization definitions below the compressor, the checkpoint format and the engine.

    args    QuantArgs, Scheme, the named SCHEMES, the fp8 dtype and the per-token activation args
    qdq     quantize / dequantize / fake-quantize / dynamic per-token (compressed-tensors' arithmetic)
    config  a checkpoint's quantization_config as dataclasses, and the one module-name matcher

It imports nothing from llmpress: every stage may import it, it imports no stage.
"""
from .args import FP8_DTYPE, FP8_MAX, FP8_PER_TOKEN, INT8_PER_TOKEN, SCHEMES, QuantArgs, Scheme, get_scheme
from .config import ConfigGroup, QuantizationConfig, matches
from .qdq import dequantize, dynamic_per_token, expand, fake_quantize, quantize

__all__ = [
    "FP8_DTYPE", "FP8_MAX", "FP8_PER_TOKEN", "INT8_PER_TOKEN", "SCHEMES", "QuantArgs", "Scheme", "get_scheme",
    "ConfigGroup", "QuantizationConfig", "matches",
    "dequantize", "dynamic_per_token", "expand", "fake_quantize", "quantize",
]
