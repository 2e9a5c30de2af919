"""Quantized Linear weights for CPU inference: containers, dispatch, reference paths.

A weight W [N=out_features, K=in_features] stays at its compressed size (int4 packed, int8, fp8,
bf16) and `w(x)` computes y = x @ W^T for float32 x [..., K]:

  M = rows of x <= w.small_m_max (decode:   fused dequantize + GEMM in csrc/qgemm.cpp (AVX2/FMA,
  16-24 rows, 32-64 with AVX-512 tiles)      512-bit tiles where the CPU has AVX-512):
                                             reads each weight once, decodes it in registers and
                                             reuses it over tiles of 2-8 rows, as many as keep x in L1
                                             (memory-bound at M = 1). int4 on AVX512-VNNI CPUs:
                                             csrc/int4_vnni.cpp, x rounded to int16 per 128 k
                                             (~-90 dB) and integer dot products, ~1.3-1.7x faster.
  M in w.amx_m, on CPUs with AMX             csrc/amx_gemm.cpp: the weight decoded to exact bf16
  (Sapphire Rapids on)                       16-row tiles, x split into two bf16 parts, products on
                                             AMX tiles: a batch of 16 costs about what one row does
                                             (prefill_dtype bf16: one bf16 part, half the products).
  larger M (prefill)                         dequantize N-tiles to transient float32 and run
                                             torch's sgemm (compute-bound; MKL is faster there);
                                             with prefill_dtype bf16, x and the tiles rounded to bf16
                                             and oneDNN's bf16 GEMM (2-3x on AVX512-BF16 CPUs).
  no extension, LLMPRESS_KERNELS=reference,  the reference path: the project's own dequantize
  or group sizes the kernels do not tile     (quant.dequantize, i.e. compressed-tensors'
  (not 32 or a multiple of 64)               (q - zp) * s in float32) and x @ W^T in torch.

Weights built from CUDA tensors keep their own layout and run `triton_linear`'s kernels (W4A16, W8A16,
W8A8, FP8; triton imported then, and only then: the CPU engine needs no triton); without triton
installed they take the reference path. Dense bf16 / fp16 weights on CUDA run F.linear (cuBLAS).

LLMPRESS_KERNELS ("reference": the torch path everywhere; "triton": the Triton kernels for every
quantized weight, CPU tensors too, which only runs under Triton's interpreter, TRITON_INTERPRET=1,
as the tests do) and LLMPRESS_AMX ("0": no AMX) are read when a weight is built; LLMPRESS_SMALL_M_MAX
and LLMPRESS_AMX_M (the row thresholds above, measured on a 2-core host) once, by the first weight. The
extension itself is compiled and loaded by `extension.py`.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..checkpoint.compressed_tensors import unpack_int
from ..errors import LlmpressError
from ..quant import FP8_DTYPE, FP8_PER_TOKEN, INT8_PER_TOKEN, QuantArgs, dequantize, dynamic_per_token
from . import extension
from .kernel_layout import block_int4, kernel_group_ok, pad_cols, round_up, scale_table, unblock_int4

class DispatchSettingError(LlmpressError, ValueError):
    """LLMPRESS_SMALL_M_MAX / LLMPRESS_AMX_M set to something that is not a row count or range."""


def parse_dispatch(environ: Mapping[str, str]) -> tuple[int | None, tuple[int, int] | None]:
    """(small_m_max, amx_m) from LLMPRESS_SMALL_M_MAX ("N": the fused kernel up to N rows, every format
    and vector width) and LLMPRESS_AMX_M ("LO,HI": the AMX GEMM for LO..HI rows); None where unset.
    The defaults are crossovers measured on a 2-core host (benchmarks/README.md); a host of another
    shape can set its own, measured with `benchmarks/engine_kernels.py --crossover`."""
    small = amx = None
    if (v := environ.get("LLMPRESS_SMALL_M_MAX", "").strip()):
        if not (v.isascii() and v.isdigit()):
            raise DispatchSettingError(f"LLMPRESS_SMALL_M_MAX={v!r} is not a row count: set a whole number >= 0 (rows up "
                                       "to which the fused decode kernel runs) or unset it for the measured defaults")
        small = int(v)
    if (v := environ.get("LLMPRESS_AMX_M", "").strip()):
        parts = [p.strip() for p in v.split(",")]
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
            raise DispatchSettingError(f"LLMPRESS_AMX_M={v!r} is not a row range: set LO,HI with 1 <= LO <= HI (rows that "
                                       "take the AMX GEMM, e.g. 8,256), LLMPRESS_AMX=0 for no AMX, or unset it")
        amx = (int(parts[0]), int(parts[1]))
    return small, amx


@functools.cache
def dispatch_overrides() -> tuple[int | None, tuple[int, int] | None]:
    """parse_dispatch(os.environ), read once per process (the first weight that binds)."""
    return parse_dispatch(os.environ)


# Prefill dequantizes W in tiles of at most this many weights (4 MiB of float32): small enough for
# malloc to reuse the buffer (a fresh 64 MiB one costs more in page faults than the sgemm) and to
# still be in cache when the sgemm reads it.
_PREFILL_TILE_FLOATS = 1 << 20


@functools.cache
def _triton_modules():
    """(triton_linear, triton_attention), imported on first use; None when triton is not installed."""
    try:
        from . import triton_attention, triton_linear
    except ImportError:
        return None
    return triton_linear, triton_attention


def triton_wanted(device: torch.device):
    """The Triton kernel modules when tensors on `device` should use them, else None: CUDA tensors with
    triton installed, or any tensors under LLMPRESS_KERNELS=triton (read now); never under "reference"."""
    mode = os.environ.get("LLMPRESS_KERNELS", "").lower()
    if mode == "reference" or (mode != "triton" and device.type != "cuda"):
        return None
    mods = _triton_modules()
    if mods is None and mode == "triton":
        raise ValueError("LLMPRESS_KERNELS=triton but triton is not installed: pip install triton==3.6.0, "
                         "or unset LLMPRESS_KERNELS")
    return mods


# ------------------------------------------------------------------------------------- the containers
class QuantizedWeight:
    """y = x @ W^T for one Linear weight W [out_features, in_features], kept compressed.

    `w(x)`: x [..., in_features] -> [..., out_features] in x's dtype, computed in float32.
    `dequantize()`: W as float32 [N, K]. `reference(x)`: the torch-only path (float32), for checks.
    `nbytes`: resident bytes. Subclasses provide `_fused(x)` (the decode kernel), `_dequant_fast`
    (C++ rows of W) and `_dequant_torch` (the project's dequantize), and call `_bind()`."""

    out_features: int
    in_features: int
    # Up to this many rows the fused kernel beats dequantize + sgemm: the crossover measured by
    # `benchmarks/engine_kernels.py --crossover` (2 threads; 16-24 rows for the float-decoded
    # formats, ~50-64 for W8A8, whose int8 x int8 math is cheaper), per subclass below.
    small_m_max = 16
    # ... with the 512-bit tiles (AVX-512 builds), which reuse each decoded weight over 2-8 rows:
    # measured on a 2-core Zen 4 (interleaved, SmolLM2's shapes 576->1536, 1536->576, 576->576), the
    # fused kernel still wins by 10-60% at these M. Taken when the weight binds, from the width set then.
    small_m_max_wide = 48
    # On CPUs with AMX, rows in this range take the AMX GEMM (`_amx`) instead, where the format has
    # one: its cost hardly grows with M up to 16 (one tile of rows) where the register tiles' grows
    # linearly, and it beats dequantize + sgemm up to 256 rows at least. Crossovers measured per
    # format with `benchmarks/engine_kernels.py --crossover` (2 threads, SmolLM2 shapes), below.
    # LLMPRESS_SMALL_M_MAX and LLMPRESS_AMX_M replace these for every format (dispatch_overrides).
    amx_m = (8, 256)
    # The activations' dtype in _prefill's GEMMs. float32: exact float32 math (the default). bfloat16: x and
    # each dequantized tile of W rounded to bf16, as GPUs run W4A16; 2-3x faster where the CPU multiplies
    # bf16 natively (AVX512-BF16, AMX), about -50 dB relative error. Set per model by Model.set_prefill_dtype.
    prefill_dtype = torch.float32
    _ext = None  # the extension when this weight takes the fast path
    _amx_ok = False  # ... and the AMX GEMM when this weight may use it
    _tri = None  # the triton_linear.TritonWeight when this weight runs the Triton kernels (CUDA)

    def _init_triton(self, tri) -> None:
        """Become a Triton weight: `tri` holds the tensors, in triton_linear's layout, and nothing else does."""
        self._tri = tri
        self.out_features, self.in_features = tri.out_features, tri.in_features
        self.group_size, self.groups = tri.group_size, tri.groups

    def _bind(self, kernels_fit: bool = True, amx_fits: bool = False) -> None:
        """Take the fast path if the layout suits the kernels, the weight is on the CPU, the extension
        is built, and LLMPRESS_KERNELS (read now, once per weight) is not "reference"; the AMX one
        too where it fits the layout and amx_available() (LLMPRESS_AMX, read now)."""
        self._ext = extension.load() if kernels_fit and self.device.type == "cpu" and extension.available() else None
        self._amx_ok = self._ext is not None and amx_fits and extension.amx_available()
        if self._ext is not None and self._ext.vector_bits() == 512:
            self.small_m_max = self.small_m_max_wide
        small, amx = dispatch_overrides()
        if small is not None:
            self.small_m_max = small
        if amx is not None:
            self.amx_m = amx

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._tri is not None:
            return _triton_modules()[0].linear(x, self._tri)
        ext = self._ext
        if ext is not None and x.dim() == 2 and x.dtype == torch.float32 and x.is_cpu:  # the engine's case: no copies
            if not x.is_contiguous():
                x = x.contiguous()
            m = x.shape[0]
            if self._amx_ok and self.amx_m[0] <= m <= self.amx_m[1]:
                return self._amx(x)
            return self._fused(x) if m <= self.small_m_max else self._prefill(x)
        if ext is None or not x.is_cpu:  # also CUDA: dequantize + matmul in torch; no GPU kernels here
            return self.reference(x).to(x.dtype)
        y = self(x.reshape(-1, self.in_features).float())
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    @property
    def nbytes(self) -> int:
        if self._tri is not None:
            return self._tri.nbytes
        return sum(t.nbytes for t in vars(self).values() if isinstance(t, torch.Tensor))

    @property
    def device(self) -> torch.device:
        if self._tri is not None:
            return self._tri.qweight.device
        return next(t for t in vars(self).values() if isinstance(t, torch.Tensor)).device

    def dequantize(self) -> torch.Tensor:
        """W as float32 [N, K], bit-exact with compressed-tensors' (q - zp) * scale in float32."""
        if self._tri is not None:
            return self._tri.dequantize()
        return self._dequant_fast(0, self.out_features) if self._ext is not None else self._dequant_torch()

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The torch path: activation fake-quant (W8A8 / FP8-dynamic), dequantize, x @ W^T in float32."""
        w = self._tri.dequantize() if self._tri is not None else self._dequant_torch()
        return F.linear(self._quant_act_torch(x.float()), w.to(x.device))

    def _prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Many rows: a GEMM against float32 tiles of W, at most _PREFILL_TILE_FLOATS at a time, in
        prefill_dtype (bf16: x and the tile rounded, the product accumulated in float32 by oneDNN)."""
        x = self._quant_act_torch(x).to(self.prefill_dtype)
        n = self.out_features
        rows = max(64, _PREFILL_TILE_FLOATS // self.in_features)
        if rows >= n:
            return F.linear(x, self._tile(0, n, x.dtype)).float()
        y = torch.empty(x.shape[0], n)
        for n0 in range(0, n, rows):
            y[:, n0 : n0 + rows] = F.linear(x, self._tile(n0, min(n, n0 + rows), x.dtype))
        return y

    def _tile(self, n0: int, n1: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows [n0, n1) of W in `dtype` for _prefill's GEMM."""
        return self._dequant_fast(n0, n1).to(dtype)

    def _quant_act_torch(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _amx(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # only called where _bind(amx_fits=True)

    def _amx_split(self, m: int) -> bool:
        """x as two bf16 parts (float32-grade) unless a prefill GEMM (past the fused rows) runs in bf16."""
        return not (self.prefill_dtype == torch.bfloat16 and m > self.small_m_max)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(out_features={self.out_features}, in_features={self.in_features}, nbytes={self.nbytes})"


class DenseWeight(QuantizedWeight):
    """An unquantized weight [N, K]. float32: torch's sgemm at every M (the fastest dense path on
    this CPU). bf16 (half the bytes, e.g. a tied lm_head): our bf16 GEMV for small M, float32
    tiles + sgemm for prefill. Other dtypes: the reference path."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        if weight.dtype == torch.bfloat16 and weight.is_cpu:
            padded = pad_cols(weight, round_up(self.in_features, 64))
            self._bits = padded.view(torch.int16)  # what the kernel reads
            self.weight = padded[:, : self.in_features]  # a view of it, no second copy
            self._bind(amx_fits=True)
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float32 and x.dtype == torch.float32 and x.device == self.weight.device:
            if self.prefill_dtype == torch.bfloat16 and x.dim() == 2 and x.shape[0] > self.small_m_max_wide:
                return self._prefill(x)  # bf16 tiles of W, not a whole bf16 copy per call
            return F.linear(x, self.weight)
        if self.weight.is_cuda:  # cuBLAS in x's dtype; a weight of another dtype is converted (exactly, when wider)
            return F.linear(x, self.weight if x.dtype == self.weight.dtype else self.weight.to(x.dtype))
        return super().__call__(x)

    @property
    def nbytes(self) -> int:
        return self._bits.nbytes if self.weight.dtype == torch.bfloat16 and self.weight.is_cpu else self.weight.nbytes

    def _fused(self, x):
        return self._ext.bf16_gemm(x, self._bits)

    def _amx(self, x):
        return self._ext.amx_bf16_gemm(x, self._bits, self._amx_split(x.shape[0]))

    def _dequant_fast(self, n0, n1):
        return self._ext.bf16_dequant(self._bits, self.in_features, n0, n1)

    def _dequant_torch(self):
        return self.weight.float()

    def _tile(self, n0, n1, dtype):
        return self.weight[n0:n1].to(dtype)  # a view when W is stored in dtype: no float32 round trip


class Int4Weight(QuantizedWeight):
    """int4 weights (W4A16, pack-quantized), symmetric or asymmetric, group-wise or channel-wise.

    qweight int32 [N, Kp/8] in the blocked layout (`block_int4`, Kp = K rounded up to 64),
    scale [N, G] (any float dtype), zero_point int8 [N, G] or None. Kept: qweight, scale as
    float32 [N, Gp] and zero_point as int8 [N, Gp], Gp = ceil(Kp / group_size), zero-padded."""

    small_m_max = 20
    small_m_max_wide = 32  # M=32 fused / sgemm us: 592 / 638 (576->1536), 433 / 619 (1536->576); M=48 847 / 832
    # 1536x576 g64, us: M=2 AMX 48 / fused 34; M=4 49 / 61; M=16 52 / 212; M=256 1095 / sgemm 1416. No upper
    # bound: AMX's cost grows linearly in M, and so does the sgemm's once the dequantize is amortized, at a
    # steeper rate: 4096x4096 g128 at M=256, 16 tiles of 256 rows, ms: AMX 133-162, sgemm alone 452-569 (and
    # dequantize 123-303 more), shared 2-core Xeon, 2 threads (issue 17: a 512-token prefill chunk took sgemm).
    # With the int16 decode kernel the fused path keeps M = 4 (8B shape 228 vs AMX 331 ms; benchmarks/README.md).
    amx_m = (5, sys.maxsize)

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, in_features: int):
        self.out_features, self.in_features = qweight.shape[0], in_features
        self.qweight = qweight
        self.scale, self.group_size, self.groups = scale_table(scale, self.out_features, in_features, qweight.shape[1] * 8)
        self.zero_point = None if zero_point is None else pad_cols(zero_point.to(torch.int8), self.scale.shape[1])
        self._bind(kernel_group_ok(self.group_size), amx_fits=self.group_size % 64 == 0)

    @classmethod
    def from_compressed(cls, tensors: dict[str, torch.Tensor]) -> "Int4Weight":
        """From weight_packed [N, ceil(K/8)], weight_scale [N, G], weight_shape [2] and, when
        asymmetric, weight_zero_point [ceil(N/8), G] (packed along dim 0)."""
        n, k = (int(v) for v in tensors["weight_shape"])
        packed = tensors["weight_packed"]
        if packed.shape != (n, math.ceil(k / 8)):
            raise ValueError(f"weight_packed has shape {tuple(packed.shape)}, expected [{n}, {math.ceil(k / 8)}] for int4")
        zp = tensors.get("weight_zero_point")
        if zp is not None:
            zp = unpack_int(zp, 4, n, dim=0)
        mods = triton_wanted(packed.device)
        tri = mods and mods[0].prepare("int4", packed, tensors["weight_scale"], zp, k)
        if tri is not None:
            self = cls.__new__(cls)
            self._init_triton(tri)
            return self
        return cls(block_int4(packed, k), tensors["weight_scale"], zp, k)

    def _fused(self, x):
        return self._ext.int4_gemm(x, self.qweight, self.scale, self.zero_point, self.group_size)

    def _amx(self, x):
        return self._ext.amx_int4_gemm(x, self.qweight, self.scale, self.zero_point, self.group_size,
                                       self._amx_split(x.shape[0]))

    def _dequant_fast(self, n0, n1):
        return self._ext.int4_dequant(self.qweight, self.scale, self.zero_point, self.group_size, self.in_features, n0, n1)

    def _dequant_torch(self):
        zp = None if self.zero_point is None else self.zero_point[:, : self.groups]
        return dequantize(unblock_int4(self.qweight, self.in_features), self.scale[:, : self.groups], zp)


class _ByteWeight(QuantizedWeight):
    """The one-byte formats: weight [N, K], scale [N, G], zero_point int8 [N, G] or None. Kept:
    qweight [N, Kp] (the stored tensor itself when K % 64 == 0), scale float32 [N, Gp], zero_point."""

    _triton_kind = "int8"  # triton_linear's name for the stored weight
    _triton_act: str | None = None  # ... and for the activation quantization

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None):
        self.out_features, self.in_features = weight.shape
        mods = triton_wanted(weight.device)
        if mods is not None:
            q = weight.view(FP8_DTYPE) if self._triton_kind == "fp8" else weight
            tri = mods[0].prepare(self._triton_kind, q, scale, zero_point, self.in_features, self._triton_act)
            if tri is not None:
                self._init_triton(tri)
                return
        kp = round_up(self.in_features, 64)
        self.qweight = pad_cols(weight, kp)
        self.scale, self.group_size, self.groups = scale_table(scale, self.out_features, self.in_features, kp)
        self.zero_point = None if zero_point is None else pad_cols(zero_point.to(torch.int8), self.scale.shape[1])
        # AMX holds the integer (or fp8) weight in bf16: exact for every fp8 and symmetric int8
        # value, not for q - zp (up to 255 in magnitude)
        self._bind(kernel_group_ok(self.group_size), amx_fits=self.group_size % 64 == 0 and self.zero_point is None)

    @classmethod
    def from_compressed(cls, tensors: dict[str, torch.Tensor], **kwargs):
        """From weight [N, K], weight_scale [N, G] and, where allowed, weight_zero_point [N, G]."""
        return cls(tensors["weight"], tensors["weight_scale"], tensors.get("weight_zero_point"), **kwargs)

    def _q(self) -> torch.Tensor:
        return self.qweight[:, : self.in_features]

    def _dequant_torch(self):
        zp = None if self.zero_point is None else self.zero_point[:, : self.groups]
        return dequantize(self._q(), self.scale[:, : self.groups], zp)


class Int8Weight(_ByteWeight):
    """int8 weights, float activations (W8A16); channel or group scales, optional zero point."""

    small_m_max = 24
    small_m_max_wide = 48  # M=48: 733 / 866 us (576->1536), 674 / 868 (1536->576)
    amx_m = (8, 256)  # M=4 AMX 60 / fused 39 us; M=8 58 / 69

    def _fused(self, x):
        return self._ext.int8_gemm(x, self.qweight, self.scale, self.zero_point, self.group_size)

    def _amx(self, x):
        return self._ext.amx_int8_gemm(x, self.qweight, self.scale, self.group_size, self._amx_split(x.shape[0]))

    def _dequant_fast(self, n0, n1):
        return self._ext.int8_dequant(self.qweight, self.scale, self.zero_point, self.group_size, self.in_features, n0, n1)


class W8A8Weight(Int8Weight):
    """int8 weights and dynamic per-token symmetric int8 activations: int8 x int8 with int32 sums."""

    _triton_act = "int8"
    small_m_max = 48
    small_m_max_wide = 64  # M=64: 810 / 2486 us (576->1536), 850 / 2098 (1536->576)
    amx_m = (2, 256)  # M=1 AMX 20 / fused 18 us; M=2 17 / 26; M=16 51 / 155

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None):
        if zero_point is not None:
            raise ValueError("W8A8 needs symmetric int8 weights (no weight_zero_point)")
        super().__init__(weight, scale)

    def _fused(self, x):
        return self._ext.w8a8_gemm(x, self.qweight, self.scale, self.group_size)

    def _amx(self, x):
        return self._ext.amx_w8a8_gemm(x, self.qweight, self.scale, self.group_size)

    def _quant_act_torch(self, x):
        return dynamic_per_token(x, INT8_PER_TOKEN)


class FP8Weight(_ByteWeight):
    """float8_e4m3fn weights; `dynamic_act` also fake-quantizes activations per token to fp8
    (FP8_DYNAMIC). No fp8 arithmetic on CPU: weights are decoded in registers, math is float32."""

    _triton_kind = "fp8"
    small_m_max = 20
    small_m_max_wide = 48  # M=48: 1027 / 2311 us (576->1536), 1207 / 1999 (1536->576)
    amx_m = (4, 256)  # M=2 AMX 52 / fused 39 us; M=4 54 / 61; M=16 94 / 208

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, dynamic_act: bool = True):
        if weight.dtype != FP8_DTYPE:
            raise ValueError(f"FP8 weights must be float8_e4m3fn, got {weight.dtype}")
        if zero_point is not None:
            raise ValueError("FP8 weights are symmetric (no weight_zero_point)")
        self.dynamic_act = dynamic_act
        super().__init__(weight.view(torch.uint8), scale)

    @property
    def _triton_act(self):
        return "fp8" if self.dynamic_act else None

    def _q(self):
        return self.qweight[:, : self.in_features].view(FP8_DTYPE)

    def _fused(self, x):
        return self._ext.fp8_gemm(x, self.qweight, self.scale, self.group_size, self.dynamic_act)

    def _amx(self, x):
        return self._ext.amx_fp8_gemm(x, self.qweight, self.scale, self.group_size, self.dynamic_act)

    def _dequant_fast(self, n0, n1):
        return self._ext.fp8_dequant(self.qweight, self.scale, self.group_size, self.in_features, n0, n1)

    def _quant_act_torch(self, x):
        return dynamic_per_token(x, FP8_PER_TOKEN) if self.dynamic_act else x


def _unpack8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pack-quantized 8-bit tensors (weight_packed int32 [N, K/4], zero point packed along N) as
    int-quantized ones (int8 weight [N, K], int8 zero point [N, G]): the same codes, one per byte."""
    n, k = (int(v) for v in tensors["weight_shape"])
    packed = tensors["weight_packed"]
    if packed.shape != (n, math.ceil(k / 4)):
        raise ValueError(f"weight_packed has shape {tuple(packed.shape)}, expected [{n}, {math.ceil(k / 4)}] for int8")
    out = {"weight": unpack_int(packed, 8, k, dim=1), "weight_scale": tensors["weight_scale"]}
    if "weight_zero_point" in tensors:
        out["weight_zero_point"] = unpack_int(tensors["weight_zero_point"], 8, n, dim=0)
    return out


def make_weight(tensors: dict[str, torch.Tensor], w: QuantArgs, a: QuantArgs | None = None) -> QuantizedWeight:
    """The container for one Linear's compressed-tensors tensors (suffix keys: "weight_packed",
    "weight_scale", ...) given its config group's weight and input-activation QuantArgs. ValueError,
    naming the reason, for what the kernels do not run."""
    bits, kind, strategy = w.num_bits, w.type, w.strategy
    if "weight_g_idx" in tensors or w.actorder == "group":
        raise ValueError("activation-order groups (actorder='group', weight_g_idx) are not supported; "
                         "requantize with actorder='weight' or none")
    if strategy not in ("tensor", "channel", "group") or w.block_structure:
        raise ValueError(f"weight strategy {strategy!r} is not supported (tensor, channel or group only)")
    if strategy == "group" and not w.group_size:
        raise ValueError("group strategy without a group_size")
    if w.dynamic:
        raise ValueError("dynamic weight quantization is not supported")
    if a is not None:
        if not a.dynamic or a.dynamic == "local":
            raise ValueError("static activation quantization is not supported (only dynamic per-token)")
        if a.strategy != "token" or not a.symmetric:
            raise ValueError(f"activation quantization must be symmetric per token, got strategy {a.strategy!r}")
        if a.num_bits != 8 or a.type != kind:
            raise ValueError(f"activations {a.type}{a.num_bits} with weights {kind}{bits} are not supported "
                             "(W8A8 int8/int8 or FP8 fp8/fp8 only)")
    if kind == "int" and bits == 4:
        if a is not None:
            raise ValueError("int4 weights with quantized activations (W4A8) are not supported")
        if "weight_packed" in tensors:
            return Int4Weight.from_compressed(tensors)
        if "weight" not in tensors:
            raise ValueError("int4 weights need a 'weight_packed' (or int8 'weight') tensor")
        return Int8Weight.from_compressed(tensors)  # int-quantized int4: int8 storage, same math
    if kind == "int" and bits == 8:
        if "weight_packed" in tensors:  # pack-quantized int8 (--budget's W8, vLLM's WNA16): the int8 codes, unpacked
            tensors = _unpack8(tensors)
        if a is not None:
            return W8A8Weight.from_compressed(tensors)
        return Int8Weight.from_compressed(tensors)
    if kind == "float" and bits == 8:
        return FP8Weight.from_compressed(tensors, dynamic_act=a is not None)
    raise ValueError(f"{kind} weights with num_bits={bits} are not supported (int4, int8 or fp8 e4m3 only)")
