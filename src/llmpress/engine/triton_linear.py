"""Triton GEMMs for the engine's quantized Linears on CUDA: W4A16, W8A16, W8A8 and FP8 (weight-only or dynamic).

`prepare(...)` converts one Linear's compressed-tensors tensors, once, to the layout below (a `TritonWeight`);
`linear(x, w)` computes y = x @ W^T for x [..., K] in float32 / bfloat16 / float16 and returns y in x's dtype,
with float32 accumulation, without a host sync (CUDA-graph capturable).

Layout (N = out_features, K = in_features, G = number of scale groups, 1 for channel-wise):
  int4   qweight int32 [ceil(K/8), N]: compressed-tensors' weight_packed [N, ceil(K/8)] transposed, so that nibble i
         of word (j, n) is W[n, 8j + i] + 8 and a tile of words is contiguous along N (16-byte loads)
  int8   qweight int8 [N, K] as stored: W^T column-major, what torch._int_mm takes as mat2
  fp8    qweight float8_e4m3fn [N, K] as stored: W^T column-major, what torch._scaled_mm takes as mat2
  scale  [G, N] in the stored dtype, contiguous along N; zero int8 [G, N] or None (symmetric):
         the value subtracted from the stored code, 8 + zero_point for int4, zero_point for int8
One kernel, `_qgemm_kernel`, serves every format: each K tile of the weight is decoded in registers to exact small
numbers (q - zero: integers up to 255 in magnitude, or fp8 values, exact in bf16 and fp16), multiplied by the x
tile with tl.dot (float32 accumulation), and scaled per group after the dot; channel and per-token activation
scales are applied once in the epilogue. A K tile never straddles a group (BLOCK_K divides the group size).

Routes, picked per call by `linear` from shapes only:
  M <= 16 (decode)   DECODE config, one M tile, so the weight is read once for all rows; split-K (fp32 partials
                     summed after) when N / BLOCK_N tiles would not fill the GPU's SMs twice
  int4, M <= 16      INT4_DECODE, read per call, picks the decode variant (below)
  M > 16 (prefill)   PREFILL config (tl.dot tiles with in-kernel dequantization)
  W8A8, M > 16       torch._int_mm (cuBLAS int8, needs M > 16 and K, N multiples of 8) for channel-wise scales
  FP8 dynamic, M>16  torch._scaled_mm with row-wise scales (fp8 tensor cores, compute capability >= 8.9) when x
                     is bf16 (its only output type on every GPU), scales are channel-wise and K, N are multiples of 16
W8A8 / FP8-dynamic activations are quantized per token by `_quant_act_kernel`, bit for bit what
quant.dynamic_per_token computes (scale amax / qmax, x / scale rounded half to even, clamped).

On CPU tensors these kernels run only under Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported), which is how tests/engine/test_triton_kernels.py checks them: linear.py takes this path for CUDA
weights, or for every weight when LLMPRESS_KERNELS=triton. The interpreter stores bfloat16 as raw bits and
cannot multiply it, so on CPU a bf16 dot runs in float32 (same products: bf16 x small integers is exact).

int4 decode variants (issue 18: the reshape of [BLOCK_K/8, 8, BLOCK_N] nibbles into a [BLOCK_K, BLOCK_N] tl.dot
operand is a layout conversion through shared memory per tile; the int4 GEMV streamed ~600 GB/s on an H200):
  "reshape"  the general kernel as above, every group size; the fallback of the other two
  "planes"   no reshape: nibble plane i of a word tile, (words >> 4i) & 15, is a [BLOCK_K/8, BLOCK_N] matrix of
             rows k = 8j + i, multiplied by the x columns t * BLOCK_K + 8j + i (a stride-8 load, L1-resident):
             8 tl.dots per tile. tl.dot needs K >= 16, so BLOCK_K >= 128 inside one group: channel-wise and
             groups that are multiples of 128 (the default; other groups take "reshape")
  "gemv"     M == 1 only (else "planes" where it applies): no tl.dot; BLOCK_N outputs per program, FMAs per
             nibble plane into a float32 [BLOCK_K/8, BLOCK_N] tile, summed over the word axis once at the end;
             the GEMV config, with split-K as for DECODE
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..quant import FP8_DTYPE


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int  # upper bound: lowered to the largest power of two dividing the group size
    num_warps: int
    num_stages: int


# Decode: 16 rows (the smallest tl.dot tile) cover every decode batch up to 16, so each weight tile is read once.
# 64 x 128 tiles are 4 KiB of int4 (8 KiB of int8 / fp8): with 4 stages in flight per program and 2+ programs per
# SM that is enough outstanding memory traffic to stream the weight at HBM speed.
DECODE = GemmConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
# Prefill: a standard tensor-core tile; the in-kernel decode is cheap next to the 64x128x64 MMA work per tile.
PREFILL = GemmConfig(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=3)
DECODE_MAX_M = 16
# M == 1 int4 GEMV ("gemv" below): no tensor-core tile, so BLOCK_M is 1; 128 columns are 512-byte rows of words
# and 256-deep tiles 16 KiB of int4 per program step (32 words a thread at 4 warps), 8 FMAs per loaded word.
GEMV = GemmConfig(block_m=1, block_n=128, block_k=256, num_warps=4, num_stages=4)
# The int4 decode variant (module docstring), read by `linear` at every call so a benchmark can switch it (and
# DECODE / GEMV) in one process: "reshape" | "planes" | "gemv". "gemv" (M = 1 on the FMA kernel, "reshape" for 2-16
# rows): measured on an H200 over the 8B shape's four linears, us per layer at M = 1: gemv 100, planes 141,
# reshape 173; at M = 16 reshape beat planes on every linear (e.g. gate_up 70 vs 113 us). benchmarks/README.md.
INT4_DECODE = "gemv"
INT4_DECODE_VARIANTS = ("reshape", "planes", "gemv")
PLANES_MIN_BLOCK_K = 128  # 8 planes of BLOCK_K / 8 rows each, and tl.dot wants K >= 16
# Split-K aims at SPLIT_K_WAVES programs per SM; more splits cost float32 partials (splits x M x N x 4 bytes, a
# quarter of an 8 MiB int4 weight's traffic at 8 splits and M = 16) and a torch sum.
SPLIT_K_WAVES = 2
MAX_SPLIT_K = 16


@dataclass(frozen=True, eq=False)
class TritonWeight:
    """One Linear in the kernels' layout (module docstring). `act`: None, "int8" (W8A8) or "fp8" (FP8_DYNAMIC)."""

    kind: str  # "int4", "int8" or "fp8"
    qweight: torch.Tensor
    scale: torch.Tensor  # [G, N]
    zero: torch.Tensor | None  # int8 [G, N]
    scale_row: torch.Tensor | None  # float32 [1, N] when channel-wise: the cuBLAS routes' epilogue scale
    out_features: int
    in_features: int
    group_size: int  # = in_features when channel-wise
    act: str | None

    @property
    def groups(self) -> int:
        return self.scale.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.qweight, self.scale, self.zero, self.scale_row) if t is not None)

    def dequantize(self) -> torch.Tensor:
        """W as float32 [N, K]: compressed-tensors' (q - zero_point) * scale, in torch (the reference path)."""
        if self.kind == "int4":
            shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=self.qweight.device)
            codes = ((self.qweight.unsqueeze(1) >> shifts[:, None]) & 15).flatten(0, 1)[: self.in_features].T
        else:
            codes = self.qweight  # [N, K]
        q = codes.float()
        if self.zero is not None:
            q = q - self._per_column(self.zero)
        elif self.kind == "int4":
            q = q - 8.0
        return q * self._per_column(self.scale)

    def _per_column(self, t: torch.Tensor) -> torch.Tensor:
        """[G, N] per-group values -> float32 [N, K]."""
        return t.T.float().repeat_interleave(self.group_size, 1)


def _block_k(cap: int, group_size: int) -> int:
    """The largest power of two <= cap dividing group_size, so that no K tile straddles two groups."""
    return min(cap, group_size & -group_size)


def prepare(kind: str, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
            in_features: int, act: str | None = None) -> TritonWeight | None:
    """compressed-tensors tensors -> TritonWeight, or None where the kernels do not tile the groups.

    int4: qweight = weight_packed int32 [N, ceil(K/8)]; int8: int8 [N, K]; fp8: float8_e4m3fn [N, K].
    scale [N, G] (or one per tensor); zero_point int8 [N, G] (unpacked) or None."""
    n, k = qweight.shape[0], in_features
    scale = scale.reshape(1, 1).expand(n, 1) if scale.numel() == 1 else scale
    if scale.dim() != 2 or scale.shape[0] != n or k % scale.shape[1]:
        raise ValueError(f"weight_scale has shape {tuple(scale.shape)}, expected [{n}, groups dividing {k}]")
    group_size = k // scale.shape[1]
    # tl.dot needs K tiles of 16 (32 for int8 x int8), and the groups must hold whole tiles.
    if scale.shape[1] > 1 and group_size % (32 if act == "int8" else 16):
        return None
    if kind == "int4":
        qweight = qweight.T.contiguous()
        zero = None if zero_point is None else (zero_point.to(torch.int16) + 8).to(torch.int8)
    else:
        zero = zero_point
    if zero is not None:
        zero = zero.T.contiguous()
    if act is not None and zero is not None:
        raise ValueError("quantized activations need symmetric weights (no zero point)")
    return TritonWeight(
        kind, qweight.contiguous(), scale.T.contiguous(), zero,
        scale.float().T.contiguous() if scale.shape[1] == 1 else None, n, k, group_size, act,
    )


# ------------------------------------------------------------------------------------- kernels
@triton.jit
def _rint(v):
    """Round half to even (torch.round), exactly: v - floor(v) is exact in float32 wherever a tie is possible."""
    f = tl.floor(v)
    d = v - f
    up = (d > 0.5) | ((d == 0.5) & (f * 0.5 != tl.floor(f * 0.5)))
    return tl.where(up, f + 1.0, f)


@triton.jit
def _round_e4m3(v):
    """float32 v, |v| <= 448 -> the nearest float8_e4m3fn value (ties to even) as float32: torch's cast, exactly.
    Done in bits because the interpreter's own fp8 cast rounds ties up; the result converts to fp8 exactly."""
    a = tl.abs(v)
    bits = a.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)  # 3 mantissa bits
    sub = _rint(a * 512.0) * 0.001953125  # below 2^-6 (e4m3's subnormals): multiples of 2^-9
    r = tl.where(a < 0.015625, sub, normal)
    return tl.where(v < 0, -r, r)


@triton.jit
def _quant_act_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, QMAX: tl.constexpr, FP8_OUT: tl.constexpr,
                      BLOCK: tl.constexpr):
    """Per-token dynamic symmetric quantization. x [M, K] -> q [M, K] (int8 or float8_e4m3fn), s float32 [M]:
    s = max(amax / QMAX, 1e-12), q = clamp(round(x / s)). One program per row, two passes over it."""
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)))
    s = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), QMAX), 1e-12)
    tl.store(s_ptr + row, s)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.math.div_rn(tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32), s)
        if FP8_OUT:
            q = _round_e4m3(tl.minimum(tl.maximum(v, -QMAX), QMAX)).to(tl.float8e4nv)
        else:
            q = tl.minimum(tl.maximum(_rint(v), -QMAX - 1.0), QMAX).to(tl.int8)
        tl.store(q_ptr + row.to(tl.int64) * K + offs, q, mask=offs < K)


@triton.jit
def _planes_dot(acc, x_rows, m_ok, words, rw, zero, K, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] + x[:, k] @ (W^T[k, :] - zero) over one int4 tile without a reshape: plane i of
    words [BLOCK_K/8, BLOCK_N] (rows rw) holds the rows k = 8 rw + i, matched by a stride-8 load of x's columns."""
    for i in tl.static_range(8):
        rk = rw * 8 + i
        a = tl.load(x_rows + rk[None, :], mask=m_ok[:, None] & (rk < K)[None, :], other=0.0)
        b = ((words >> (4 * i)) & 0xF) - zero
        acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _qgemm_kernel(
    x_ptr, xs_ptr, w_ptr, s_ptr, z_ptr, y_ptr,
    M, N, K, stride_xm, tiles_per_split,
    KIND: tl.constexpr, HAS_ZERO: tl.constexpr, GROUP_SIZE: tl.constexpr, ACT_SCALED: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INT_DOT: tl.constexpr, ACC_DTYPE: tl.constexpr, PART_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, PARTIAL: tl.constexpr, PLANES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = x @ W^T for x [M, K] (row stride stride_xm), W in the module's layout; KIND 4 (int4), 8 (int8), 9 (fp8).

    GROUP_SIZE 0: channel-wise scales s [1, N], applied in the epilogue; else s [K / GROUP_SIZE, N], applied per
    K tile. ACT_SCALED: x holds quantized activations with per-row scales xs [M] (int8 x int8 -> int32 dots when
    DOT_DTYPE is int8). Grid (M tiles, N tiles, splits): split s sums K tiles [s, s + 1) * tiles_per_split; with
    PARTIAL it writes float32 partials y [splits, M, N], else y [M, N] in y's dtype (contiguous). INT_DOT: int8
    operands, int32 products (ACC_DTYPE int32 when channel-wise: exact sums over all of K). PLANES (KIND 4,
    BLOCK_K >= 128, float dots): `_planes_dot` instead of the nibble reshape."""
    pid_m, pid_n, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC_DTYPE)
    t0 = pid_s * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, tl.cdiv(K, BLOCK_K))
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    for t in range(t0, t1):
        if PLANES:
            rw = t * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
            words = tl.load(w_ptr + rw.to(tl.int64)[:, None] * N + rn[None, :],
                            mask=(rw < tl.cdiv(K, 8))[:, None] & n_ok[None, :], other=0)
            g = 0
            if GROUP_SIZE > 0:
                g = t * BLOCK_K // GROUP_SIZE
            zero = tl.full([1, BLOCK_N], 8, tl.int32)
            if HAS_ZERO:
                zero = tl.load(z_ptr + g * N + rn, mask=n_ok, other=0).to(tl.int32)[None, :]
            if GROUP_SIZE == 0:
                acc = _planes_dot(acc, x_rows, m_ok, words, rw, zero, K, DOT_DTYPE, PRECISION)
            else:  # as below: a fresh sum per tile, scaled by its group's scales
                part = _planes_dot(tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), x_rows, m_ok, words, rw, zero, K,
                                   DOT_DTYPE, PRECISION)
                acc += part * tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        else:
            rk = t * BLOCK_K + tl.arange(0, BLOCK_K)
            a = tl.load(x_rows + rk[None, :], mask=m_ok[:, None] & (rk < K)[None, :], other=0.0)
            if KIND == 4:  # [BLOCK_K / 8, BLOCK_N] words -> [BLOCK_K, BLOCK_N] nibbles, k = 8 word + nibble
                rw = t * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
                words = tl.load(w_ptr + rw.to(tl.int64)[:, None] * N + rn[None, :],
                                mask=(rw < tl.cdiv(K, 8))[:, None] & n_ok[None, :], other=0)
                q = (words[:, None, :] >> (tl.arange(0, 8) * 4)[None, :, None]) & 0xF
                q = tl.reshape(q, (BLOCK_K, BLOCK_N))
            else:
                q = tl.load(w_ptr + rn.to(tl.int64)[None, :] * K + rk[:, None], mask=(rk < K)[:, None] & n_ok[None, :],
                            other=0.0)
            g = 0
            if GROUP_SIZE > 0:
                g = t * BLOCK_K // GROUP_SIZE
            if HAS_ZERO:
                q = q.to(tl.int32) - tl.load(z_ptr + g * N + rn, mask=n_ok, other=0).to(tl.int32)[None, :]
            elif KIND == 4:
                q = q - 8
            if INT_DOT:
                b = q.to(tl.int8)
            else:
                a = a.to(DOT_DTYPE)
                b = q.to(DOT_DTYPE)
            if GROUP_SIZE == 0:
                acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
            else:  # a fresh dot per tile, scaled by its group's scales
                part = tl.dot(a, b, input_precision=PRECISION, out_dtype=PART_DTYPE)
                acc += part.to(tl.float32) * tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = acc.to(tl.float32)
    if GROUP_SIZE == 0:
        out = out * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if ACT_SCALED:
        out = out * tl.load(xs_ptr + rm, mask=m_ok, other=0.0)[:, None]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    if PARTIAL:
        tl.store(y_ptr + pid_s.to(tl.int64) * M * N + offs, out, mask=m_ok[:, None] & n_ok[None, :])
    else:
        tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _nibble_plane(words, I: tl.constexpr):
    """Nibble I of int32 words as float32 1 + q / 16 (q = 0..15): the nibble moved into the top 4 mantissa bits of
    1.0 by a shift and a mask-or, exactly. An int -> float conversion runs at a quarter of the FMA rate on Hopper
    (16 a clock per SM), below the ~32 nibbles a clock per SM that streaming int4 at HBM speed needs."""
    if 4 * I <= 19:
        m = words << (19 - 4 * I)
    else:
        m = words >> (4 * I - 19)  # arithmetic shift: the sign bits it brings in are masked off
    return ((m & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, N, K, tiles_per_split,
    HAS_ZERO: tl.constexpr, GROUP_SIZE: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y [N] = W x for one row x [K] and an int4 W (module layout), without tl.dot: float32 FMAs per nibble plane.

    Grid (N tiles, splits) as in _qgemm_kernel; PARTIAL writes float32 y [splits, 1, N]. With f = 1 + q / 16
    (`_nibble_plane`) and z the subtracted code (8 + zero point), f - (1 + z / 16) = (q - z) / 16 exactly (both
    in [1, 2) with 4 mantissa bits): one FADD and one FFMA a nibble into a [BLOCK_K/8, BLOCK_N] float32 tile,
    scaled per group and summed over the word axis once, after the loop; times 16 in the epilogue."""
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    acc = tl.zeros([BLOCK_K // 8, BLOCK_N], dtype=tl.float32)
    t0 = pid_s * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, tl.cdiv(K, BLOCK_K))
    for t in range(t0, t1):
        rw = t * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
        words = tl.load(w_ptr + rw.to(tl.int64)[:, None] * N + rn[None, :],
                        mask=(rw < tl.cdiv(K, 8))[:, None] & n_ok[None, :], other=0)
        g = 0
        if GROUP_SIZE > 0:
            g = t * BLOCK_K // GROUP_SIZE
        zf = tl.full([BLOCK_N], 1.5, tl.float32)  # 1 + 8 / 16: symmetric codes are stored + 8
        if HAS_ZERO:
            zf = 1.0 + tl.load(z_ptr + g * N + rn, mask=n_ok, other=0).to(tl.float32) * 0.0625
        r = tl.zeros([BLOCK_K // 8, BLOCK_N], dtype=tl.float32)
        for i in tl.static_range(8):
            rk = rw * 8 + i
            a = tl.load(x_ptr + rk, mask=rk < K, other=0.0).to(tl.float32)  # [BLOCK_K/8], L1-resident
            r += a[:, None] * (_nibble_plane(words, i) - zf[None, :])
        if GROUP_SIZE > 0:
            r = r * tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc += r
    out = tl.sum(acc, axis=0) * 16.0
    if GROUP_SIZE == 0:
        out = out * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    if PARTIAL:
        tl.store(y_ptr + pid_s.to(tl.int64) * N + rn, out, mask=n_ok)
    else:
        tl.store(y_ptr + rn, out.to(y_ptr.dtype.element_ty), mask=n_ok)


# ------------------------------------------------------------------------------------- launchers
_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_KIND = {"int4": 4, "int8": 8, "fp8": 9}


@functools.cache
def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill; 4 under the interpreter (CPU), so small tests still split K."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


@functools.cache
def _has_fp8_mma(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_act(x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (last dim contiguous) -> (q [M, K] int8 or float8_e4m3fn, scales float32 [M])."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8 if act == "int8" else FP8_DTYPE, device=x.device)
    s = torch.empty(m, dtype=torch.float32, device=x.device)
    if m:
        _quant_act_kernel[(m,)](x, q, s, k, x.stride(0), QMAX=127.0 if act == "int8" else 448.0,
                                FP8_OUT=act == "fp8", BLOCK=1024, num_warps=4)
    return q, s


def split_k_for(m: int, n: int, k: int, cfg: GemmConfig, block_k: int, device: torch.device) -> int:
    """K splits so that the programs fill every SM SPLIT_K_WAVES times (decode shapes with few N tiles), each
    split keeping at least two K tiles; 1 when the M x N tiles alone are enough."""
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    k_tiles = triton.cdiv(k, block_k)
    want = triton.cdiv(SPLIT_K_WAVES * _num_sms(device), tiles)
    return max(1, min(want, k_tiles // 2, MAX_SPLIT_K))


def _split(m: int, n: int, k: int, cfg: GemmConfig, block_k: int, split_k: int | None,
           device: torch.device) -> tuple[int, int]:
    """(splits, K tiles per split): `split_k` if given, else `split_k_for`'s, without empty splits."""
    splits = split_k if split_k is not None else split_k_for(m, n, k, cfg, block_k, device)
    k_tiles = triton.cdiv(k, block_k)
    per_split = triton.cdiv(k_tiles, max(1, min(splits, k_tiles)))
    return triton.cdiv(k_tiles, per_split), per_split


def _int4_gemv(x: torch.Tensor, w: TritonWeight, split_k: int | None, out_dtype: torch.dtype) -> torch.Tensor:
    """x [1, K] (last dim contiguous) -> y [1, N] in out_dtype, by `_int4_gemv_kernel` with the GEMV config."""
    cfg = GEMV
    n, k = w.out_features, w.in_features
    bk = _block_k(cfg.block_k, w.group_size if w.groups > 1 else cfg.block_k)
    splits, per_split = _split(1, n, k, cfg, bk, split_k, x.device)
    y = torch.empty((splits, 1, n) if splits > 1 else (1, n), dtype=torch.float32 if splits > 1 else out_dtype,
                    device=x.device)
    if n:
        _int4_gemv_kernel[(triton.cdiv(n, cfg.block_n), splits)](
            x, w.qweight, w.scale, w.zero, y, n, k, per_split,
            HAS_ZERO=w.zero is not None, GROUP_SIZE=w.group_size if w.groups > 1 else 0, PARTIAL=splits > 1,
            BLOCK_N=cfg.block_n, BLOCK_K=bk, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return y.sum(0).to(out_dtype) if splits > 1 else y


def int4_decode_route(m: int, w: TritonWeight) -> str | None:
    """The kernel variant `linear` takes for M rows through int4 weight w: INT4_DECODE where it applies ("gemv"
    at M == 1, "planes" where the DECODE K tile is >= 128 deep), else "reshape"; None off the int4 decode route."""
    if INT4_DECODE not in INT4_DECODE_VARIANTS:
        raise ValueError(f"triton_linear.INT4_DECODE is {INT4_DECODE!r}: set it to one of {INT4_DECODE_VARIANTS}")
    if w.kind != "int4" or m > DECODE_MAX_M:
        return None
    if INT4_DECODE == "gemv":  # at 2-16 rows "reshape" beat "planes" on an H200 (benchmarks/README.md)
        return "gemv" if m == 1 else "reshape"
    bk = _block_k(DECODE.block_k, w.group_size if w.groups > 1 else DECODE.block_k)
    return "planes" if INT4_DECODE == "planes" and bk >= PLANES_MIN_BLOCK_K else "reshape"


def linear(x: torch.Tensor, w: TritonWeight, split_k: int | None = None) -> torch.Tensor:
    """y = x @ W^T: x [..., K] float32 / bfloat16 / float16 -> y [..., N] in x's dtype. `split_k` forces the
    number of K splits of the Triton route (tests); by default `split_k_for` picks it. int4 decode (M <= 16)
    takes the INT4_DECODE variant where it applies (module docstring), read here at every call."""
    n, k = w.out_features, w.in_features
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    out_dtype = x.dtype
    xs = None
    if w.act is not None:
        q, xs = quantize_act(x2, w.act)
        if x.is_cuda and m > DECODE_MAX_M and w.scale_row is not None:
            if w.act == "int8" and k % 8 == 0 and n % 8 == 0:
                y = torch._int_mm(q, w.qweight.T)  # [M, N] int32, exact sums
                return (y.float() * xs[:, None] * w.scale_row).to(out_dtype).reshape(*lead, n)
            fp8_ok = out_dtype == torch.bfloat16 and k % 16 == 0 and n % 16 == 0 and _has_fp8_mma(x.device)
            if w.act == "fp8" and fp8_ok:
                y = torch._scaled_mm(q, w.qweight.T, scale_a=xs[:, None], scale_b=w.scale_row, out_dtype=out_dtype)
                return y.reshape(*lead, n)
        x2 = q
        # int8 x int8 on integer tensor cores; fp8 activations times fp8 weights exactly in fp16 (both are e4m3)
        dot = tl.int8 if w.act == "int8" else tl.float16
    elif x.dtype == torch.bfloat16 and not x.is_cuda:
        dot = tl.float32  # the interpreter cannot multiply bf16 (module docstring)
    else:
        dot = _TL[x.dtype]
    route = int4_decode_route(m, w)
    if route == "gemv":
        return _int4_gemv(x2, w, split_k, out_dtype).reshape(*lead, n)
    cfg = DECODE if m <= DECODE_MAX_M else PREFILL
    bk = _block_k(cfg.block_k, w.group_size if w.groups > 1 else cfg.block_k)
    splits, per_split = _split(m, n, k, cfg, bk, split_k, x.device)
    y = torch.empty((splits, m, n) if splits > 1 else (m, n), dtype=torch.float32 if splits > 1 else out_dtype,
                    device=x.device)
    if m and n:
        grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), splits)
        _qgemm_kernel[grid](
            x2, xs, w.qweight, w.scale, w.zero, y, m, n, k, x2.stride(0), per_split,
            KIND=_KIND[w.kind], HAS_ZERO=w.zero is not None, GROUP_SIZE=w.group_size if w.groups > 1 else 0,
            ACT_SCALED=xs is not None, DOT_DTYPE=dot, INT_DOT=dot == tl.int8,
            ACC_DTYPE=tl.int32 if dot == tl.int8 and w.groups == 1 else tl.float32,
            PART_DTYPE=tl.int32 if dot == tl.int8 else tl.float32, PRECISION="ieee" if dot == tl.float32 else None,
            PARTIAL=splits > 1, PLANES=route == "planes", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if splits > 1:
        y = y.sum(0).to(out_dtype)
    return y.reshape(*lead, n)
