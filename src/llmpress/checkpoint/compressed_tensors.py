"""The compressed-tensors checkpoint format (what vLLM and transformers read).

Per quantized Linear `prefix`, by format:
  pack-quantized  (int, < 8 bits): prefix.weight_packed int32 [out, ceil(in*b/32)],
                   prefix.weight_scale [out, G], prefix.weight_shape int64 [2],
                   prefix.weight_zero_point int32 [ceil(out*b/32), G] (asymmetric only)
  int-quantized   (int8):          prefix.weight int8 [out, in], prefix.weight_scale [out, G]
  float-quantized (fp8 e4m3):      prefix.weight float8_e4m3fn [out, in], prefix.weight_scale [out, 1]
Packing is a dense little-endian bitstream along the packed dim: element i of
each row occupies bits [i*b, (i+1)*b), values offset by 2^(b-1) to be unsigned.
config.json carries `quantization_config` with quant_method
"compressed-tensors", the format, config_groups (targets + QuantizationArgs),
ignore, and quantization_status "compressed".
"""
from __future__ import annotations

import math

import torch

from ..quant import Scheme, dequantize

FORMAT_VERSION = "0.20.0"  # the compressed-tensors release whose reader we test against


def pack_int(q: torch.Tensor, num_bits: int, dim: int = 1) -> torch.Tensor:
    """int8 [R, C] holding values in [-2^(b-1), 2^(b-1)) -> int32, packed along `dim`."""
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int wants int8 values, got {q.dtype}")
    x = q.to(torch.int64) + (1 << (num_bits - 1))  # unsigned
    if dim == 0:
        x = x.T
    rows, cols = x.shape
    words = math.ceil(cols * num_bits / 32)
    if 32 % num_bits == 0:  # fast path: whole elements per word (b = 1, 2, 4, 8)
        per = 32 // num_bits
        x = torch.nn.functional.pad(x, (0, words * per - cols)).view(rows, words, per)
        shifts = torch.arange(per, dtype=torch.int64, device=x.device) * num_bits
        out = (x << shifts).sum(-1)
    else:  # general bitstream: an element may straddle two words
        bit = torch.arange(cols, dtype=torch.int64, device=x.device) * num_bits
        out = torch.zeros(rows, words + 1, dtype=torch.int64, device=x.device)
        out.scatter_add_(1, (bit // 32).expand(rows, -1), x << (bit % 32))
        # bits shifted past 32 belong to the next word
        out[:, 1:] += out[:, :-1] >> 32
        out = out[:, :words] & 0xFFFFFFFF
    out = out & 0xFFFFFFFF
    out = torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)
    return out.T.contiguous() if dim == 0 else out.contiguous()


def unpack_int(packed: torch.Tensor, num_bits: int, n: int, dim: int = 1) -> torch.Tensor:
    """Inverse of pack_int: int32 -> int8 with `n` elements along `dim`."""
    x = packed.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:
        x = x.T
    rows, words = x.shape
    bit = torch.arange(n, dtype=torch.int64, device=x.device) * num_bits
    w, off = bit // 32, bit % 32
    lo = x[:, w] >> off
    nxt = torch.clamp(w + 1, max=words - 1)
    hi = torch.where(off + num_bits > 32, x[:, nxt] << (32 - off), torch.zeros_like(lo))
    vals = ((lo | hi) & ((1 << num_bits) - 1)) - (1 << (num_bits - 1))
    vals = vals.to(torch.int8)
    return vals.T.contiguous() if dim == 0 else vals


def compress_linear(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: Scheme
) -> dict[str, torch.Tensor]:
    """Tensors for one quantized Linear, keyed by suffix ("weight_packed", ...)."""
    fmt = scheme.format
    if fmt == "pack-quantized":
        out = {
            "weight_packed": pack_int(q, scheme.weights.num_bits, dim=1),
            "weight_scale": scale,
            "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64),
        }
        if zero_point is not None:
            out["weight_zero_point"] = pack_int(zero_point.to(torch.int8), scheme.weights.num_bits, dim=0)
        return out
    out = {"weight": q, "weight_scale": scale}
    if zero_point is not None:
        out["weight_zero_point"] = zero_point.to(torch.int8)
    return out


def decompress_linear(tensors: dict[str, torch.Tensor], scheme: Scheme) -> torch.Tensor:
    """Dense weight from one Linear's stored tensors (our reference reader)."""
    scale = tensors["weight_scale"]
    zp = tensors.get("weight_zero_point")
    if "weight_packed" in tensors:
        rows, cols = (int(v) for v in tensors["weight_shape"])
        q = unpack_int(tensors["weight_packed"], scheme.weights.num_bits, cols, dim=1)
        if zp is not None:
            zp = unpack_int(zp, scheme.weights.num_bits, rows, dim=0)
    else:
        q = tensors["weight"]
    return dequantize(q, scale, zp)


def quantization_config(scheme: Scheme, ignore: list[str], targets: list[str]) -> dict:
    """config.json["quantization_config"] as compressed-tensors' QuantizationConfig writes it."""
    return mixed_quantization_config([(scheme, targets)], ignore)


def mixed_quantization_config(groups: list[tuple[Scheme, list[str]]], ignore: list[str]) -> dict:
    """The same with one config group per (scheme, targets), in order (group_0, group_1, ...). Mixed
    precision (--budget) passes exact module names as targets, so no module matches two groups; the
    top-level format is the groups' common one, else compressed-tensors' "mixed-precision"."""
    config_groups = {
        f"group_{i}": {
            "targets": list(targets),
            "weights": scheme.weights.to_ct(),
            "input_activations": scheme.input_activations.to_ct() if scheme.input_activations else None,
            "output_activations": None,
            "format": scheme.format,
        }
        for i, (scheme, targets) in enumerate(groups)
    }
    formats = {scheme.format for scheme, _ in groups}
    return {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
        "version": FORMAT_VERSION,
    }
