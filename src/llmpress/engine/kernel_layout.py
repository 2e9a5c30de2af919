"""The CPU kernels' weight layouts (csrc/qgemm.cpp, csrc/amx_gemm.cpp): int4 nibbles blocked so one 256-bit load
and a mask give 8 consecutive k, rows zero-padded to a multiple of 64 k, and float32 scale tables with one layout
for group-wise and channel-wise scales. Pure tensor functions; linear.py builds its weights with them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def pad_cols(w: torch.Tensor, cols: int) -> torch.Tensor:
    """w [N, K] -> contiguous [N, cols], zero-padded; w itself (no copy) when nothing to pad."""
    w = w.contiguous()
    return w if w.shape[1] == cols else F.pad(w, (0, cols - w.shape[1]))


def scale_table(scale: torch.Tensor, n: int, k: int, kp: int) -> tuple[torch.Tensor, int, int]:
    """Stored scale [N, G] (or one per tensor) -> (float32 [N, ceil(Kp / gs)] zero-padded, gs, G).

    Channel-wise scales become one group of size Kp, so the kernels see a single layout."""
    scale = scale.float()
    if scale.numel() == 1:
        scale = scale.reshape(1, 1).expand(n, 1)
    if scale.dim() != 2 or scale.shape[0] != n:
        raise ValueError(f"weight_scale has shape {tuple(scale.shape)}, expected [{n}, groups]")
    groups = scale.shape[1]
    if groups == 1:
        return scale.contiguous(), kp, 1
    if k % groups:
        raise ValueError(f"in_features {k} is not a whole number of {groups} groups")
    gs = k // groups
    return pad_cols(scale, math.ceil(kp / gs)), gs, groups


def kernel_group_ok(group_size: int) -> bool:
    """The kernels step 64 k at a time: groups of 32 (two a step) or whole steps."""
    return group_size == 32 or group_size % 64 == 0


_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)  # nibble t sits at bits [4t, 4t + 4)


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 holding 32 unsigned bits -> int32 with the same bits."""
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def block_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """compressed-tensors int4 [N, ceil(K/8)] (nibble i of word j = k 8j + i) -> blocked [N, Kp/8].

    Blocked: in each group of 8 words (64 k values), nibble t of word j holds k = 8t + j, so one
    256-bit load and a mask give 8 consecutive k (an 8x8 nibble transpose per block). Kp = K
    rounded up to 64; padding nibbles are 0 and meet zero activations. Done in row chunks to keep
    the int64 temporaries small for big matrices."""
    n, kp = packed.shape[0], round_up(k, 64)
    out = torch.empty(n, kp // 8, dtype=torch.int32, device=packed.device)
    rows = max(1, (1 << 22) // kp)
    shifts = _SHIFTS.to(packed.device)
    for r in range(0, n, rows):
        nib = (packed[r : r + rows].unsqueeze(-1) >> shifts) & 15  # [R, W, 8]: k order
        nib = F.pad(nib.flatten(1)[:, :k], (0, kp - k))
        nib = nib.view(nib.shape[0], kp // 64, 8, 8).transpose(2, 3).to(torch.int64)  # [R, block, j, t]
        out[r : r + rows] = _to_int32((nib << shifts.to(torch.int64)).sum(-1)).flatten(1)
    return out


def unblock_int4(blocked: torch.Tensor, k: int) -> torch.Tensor:
    """Blocked [N, Kp/8] -> the signed int4 values int8 [N, K] (q = nibble - 8)."""
    n, kp = blocked.shape[0], blocked.shape[1] * 8
    nib = (blocked.unsqueeze(-1) >> _SHIFTS.to(blocked.device)) & 15  # [N, Kp/8, 8]: (word j, nibble t)
    nib = nib.view(n, kp // 64, 8, 8).transpose(2, 3).reshape(n, kp)  # k = 64 block + 8t + j
    return (nib[:, :k] - 8).to(torch.int8)
