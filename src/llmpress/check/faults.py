"""Pure tensor checks of one quantized Linear's stored tensors (compressed-tensors layout, see
checkpoint/compressed_tensors.py): scales that are non-finite or not positive, and groups whose
codes are all at the zero point (the group dequantizes to zeros) or all at the ends of the code
range (the scale is far too small: every weight clipped). A quantizer that works produces neither
on real weights: a range observer maps the group's largest |w| to about the range's end, so an
all-zero group needs an all-zero original group, and saturation needs a scale several times too
small (an MSE search clips at most a few of the largest weights of a group).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checkpoint.compressed_tensors import unpack_int

# Below this many weights per group, every code at the range's ends can be legitimate (an asymmetric
# min-max group of 2 maps its two weights exactly onto the two ends), so saturation is not judged.
MIN_SATURATION_GROUP = 8


@dataclass(frozen=True)
class GroupFaults:
    groups: int  # groups in the module
    all_zero: torch.Tensor  # bool [out, G]: every code equals the zero point
    saturated: torch.Tensor  # bool [out, G]: every code is qmin or qmax


def codes(tensors: dict[str, torch.Tensor], num_bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(codes [out, in] as float32, zero points [out, G] as float32 or None) from a Linear's stored tensors:
    pack-quantized (weight_packed + weight_shape), int-quantized (int8 weight) or float-quantized (fp8)."""
    zp = tensors.get("weight_zero_point")
    if "weight_packed" in tensors:
        rows, cols = (int(v) for v in tensors["weight_shape"])
        q = unpack_int(tensors["weight_packed"], num_bits, cols, dim=1)
        if zp is not None:  # packed along the output dim: [ceil(out*b/32), G] -> [out, G]
            zp = unpack_int(zp, num_bits, rows, dim=0)
    else:
        q = tensors["weight"]
    return q.float(), None if zp is None else zp.float()


def scale_faults(scale: torch.Tensor) -> tuple[int, int]:
    """(non-finite count, zero-or-negative count) of a weight_scale tensor of any shape. A zero scale
    dequantizes its group to zeros whatever the codes; a negative one flips its group's sign."""
    s = scale.float()
    finite = torch.isfinite(s)
    return int((~finite).sum()), int((finite & (s <= 0)).sum())


def group_faults(q: torch.Tensor, zero_point: torch.Tensor | None, groups: int, qmin: float, qmax: float) -> GroupFaults:
    """q [out, in] codes split into `groups` equal groups per row (1 = per channel);
    zero_point [out, groups] or None (symmetric: 0)."""
    out, cols = q.shape
    g = q.reshape(out, groups, cols // groups)  # [out, G, group_size]
    zp = torch.zeros(out, groups) if zero_point is None else zero_point.reshape(out, groups)
    all_zero = (g == zp[..., None]).all(-1)
    if cols // groups >= MIN_SATURATION_GROUP:
        saturated = ((g == qmin) | (g == qmax)).all(-1)
    else:
        saturated = torch.zeros(out, groups, dtype=torch.bool)
    return GroupFaults(out * groups, all_zero, saturated)


def nonfinite_count(t: torch.Tensor) -> int:
    """NaN / inf values of a float tensor, counted in its own dtype a slice of ~16M values at a time: the 8B
    model's 1 GB bf16 embedding would otherwise cost a 2 GB float32 copy (and its masks) at the check's peak."""
    if not t.is_floating_point():
        return 0
    flat = t.reshape(-1)
    step = 1 << 24
    return sum(int((~torch.isfinite(flat[i : i + step])).sum()) for i in range(0, flat.numel(), step))


def expected_scale_shape(out: int, cols: int, strategy: str, group_size: int | None) -> tuple[int, ...] | None:
    """weight_scale's shape for a [out, cols] weight under a compressed-tensors strategy (None: not judged)."""
    if strategy == "group" and group_size:
        return (out, cols // group_size) if cols % group_size == 0 else None
    if strategy == "channel":
        return (out, 1)
    if strategy == "tensor":
        return (1,)
    return None
