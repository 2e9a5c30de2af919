"""Offline Hadamard rotation of a Llama-family model before calibration: QuaRot (Ashkboos et al. 2024,
arXiv 2404.00456) / SpinQuant (Liu et al. 2024, arXiv 2405.16406) R1 and R2, fused into the weights.

R1 rotates the residual stream by an orthogonal Q [d, d] (a Hadamard matrix with random signs, scaled
by 1/sqrt(d)): RMSNorm(x Q) = RMSNorm(x) Q once each norm's scale is folded into the Linears that read
it (norm weights become ones), so
  embedding            E [V, d]      -> E Q
  residual readers     W [out, d]    -> (W diag(g)) Q         q, k, v, gate, up (g: their norm's weight)
  lm_head              W [V, d]      -> (W diag(g_final)) Q   (untied from the embedding: E Q != W Q ...)
  residual writers     W [d, in]     -> Q^T W                 o_proj, down_proj
and the network computes the same function. R2 rotates each attention head's values by a Hadamard
R [hd, hd]: v_proj's rows of head h -> R^T W_h, o_proj's columns of every query head -> W_h R (the
softmax weights mix values of one kv head, so the rotation passes through attention unchanged).
Hadamard rotations spread outlier channels over all channels, so int4 groups see flatter weights
and W8A8 flatter activations; the output is a plain Llama checkpoint with ordinary quantization.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))


_H2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)


@cache
def hadamard_factors(n: int) -> tuple[torch.Tensor, ...] | None:
    """Small Hadamard matrices whose Kronecker product is a Hadamard matrix of order n (entries +-1,
    H H^T = n I), float64, or None if none is built: Sylvester doubling (a 2 x 2 factor), Paley I
    (n = q + 1, q a prime = 3 mod 4) and products of those; SmolLM2's 576 = 2 x 2 x 2 x 72 (Paley, q = 71)."""
    if n == 1:
        return ()
    if n % 4 and n != 2:
        return None
    if n % 2 == 0 and (f := hadamard_factors(n // 2)) is not None:
        return (_H2, *f)
    q = n - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I from the Jacobsthal matrix of the quadratic residues mod q
        residues = {(i * i) % q for i in range(1, q)}
        chi = torch.tensor([0.0] + [1.0 if i in residues else -1.0 for i in range(1, q)], dtype=torch.float64)
        idx = torch.arange(q)
        jac = chi[(idx[None, :] - idx[:, None]) % q]  # [q, q], Q[i, j] = chi(j - i), skew-symmetric
        s = torch.zeros(n, n, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jac
        return (s + torch.eye(n, dtype=torch.float64),)
    for a in range(4, math.isqrt(n) + 1, 4):
        if n % a == 0 and (fa := hadamard_factors(a)) is not None and (fb := hadamard_factors(n // a)) is not None:
            return (*fa, *fb)
    return None


def hadamard(n: int) -> torch.Tensor | None:
    """The dense Hadamard matrix of order n [n, n] float64 (None if none is built)."""
    f = hadamard_factors(n)
    if f is None:
        return None
    h = torch.ones(1, 1, dtype=torch.float64)
    for m in f:
        h = torch.kron(h, m)
    return h


@dataclass(frozen=True)
class Rotation:
    """Q = H diag(signs) / sqrt(n), orthogonal, with H kept as its Kronecker factors: x Q costs
    n * sum(factor sizes) per row instead of n^2 (QuaRot's fast Hadamard transform, in torch)."""

    factors: tuple[torch.Tensor, ...]
    signs: torch.Tensor  # [n], +-1

    @property
    def n(self) -> int:
        return self.signs.numel()

    def right(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n] -> x Q, in the signs' dtype."""
        shape = x.shape
        y = x.to(self.signs.dtype).reshape(-1, 1, self.n)  # [B, pre, n]
        pre = 1
        for f in self.factors:  # contract each Kronecker axis with its factor
            m = f.shape[0]
            y = torch.einsum("bimj,mk->bikj", y.reshape(y.shape[0], pre, m, -1), f.to(y.dtype))
            pre *= m
        return (y.reshape(shape) * self.signs / math.sqrt(self.n))

    def left_t(self, w: torch.Tensor) -> torch.Tensor:
        """W [n, m] -> Q^T W."""
        return self.right(w.T).T

    def matrix(self) -> torch.Tensor:
        return self.right(torch.eye(self.n, dtype=self.signs.dtype))


def random_hadamard(n: int, seed: int, dtype: torch.dtype = torch.float64) -> Rotation:
    """QuaRot's randomized Hadamard rotation of order n with random signs from `seed`."""
    f = hadamard_factors(n)
    if f is None:
        raise ValueError(f"no Hadamard matrix of order {n} is built here (orders 2^k, q+1 for primes q = 3 mod 4, "
                         "and products of those)")
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g).to(dtype) * 2 - 1
    return Rotation(f, signs)


def rotate_reader(w: torch.Tensor, q: Rotation, norm: torch.Tensor | None = None) -> torch.Tensor:
    """W [out, d] reading the (normed) residual -> (W diag(norm)) Q."""
    if norm is not None:
        w = w.to(q.signs.dtype) * norm.to(q.signs.dtype)
    return q.right(w)


def rotate_writer(w: torch.Tensor, q: Rotation) -> torch.Tensor:
    """W [d, in] writing into the residual -> Q^T W."""
    return q.left_t(w)


def rotate_v_heads(w: torch.Tensor, r: Rotation) -> torch.Tensor:
    """v_proj's W [kv*hd, d] (or its bias [kv*hd]): each head's rows -> R^T W_h."""
    x = w.reshape(-1, r.n, *w.shape[1:])  # [kv, hd, (d)]
    x = x.unsqueeze(-1) if w.ndim == 1 else x
    out = torch.stack([r.left_t(h) for h in x])  # per kv head [hd, d]
    return out.reshape(w.shape)


def rotate_o_heads(w: torch.Tensor, r: Rotation) -> torch.Tensor:
    """o_proj's W [d, heads*hd]: each head's columns -> W_h R."""
    d = w.shape[0]
    return r.right(w.reshape(d, -1, r.n)).reshape(d, -1)


# Llama-family tensor names (suffix after "model.layers.{i}.") -> role
READERS = {"self_attn.q_proj.weight": "input_layernorm", "self_attn.k_proj.weight": "input_layernorm",
           "self_attn.v_proj.weight": "input_layernorm", "mlp.gate_proj.weight": "post_attention_layernorm",
           "mlp.up_proj.weight": "post_attention_layernorm"}
WRITERS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
SUPPORTED = ("llama", "mistral", "qwen2")


class RotatedCheckpoint:
    """A LazyCheckpoint view of the rotated model: get(key) rotates one stored tensor (float32 math,
    cast back to its stored dtype or to `dtype`), so compress streams layer by layer exactly as without rotation.
    A tied lm_head becomes its own `lm_head.weight` (the output config unties it)."""

    def __init__(self, ckpt, config, seed: int, dtype: torch.dtype | None = None):
        self.ckpt, self.folder, self.dtype = ckpt, ckpt.folder, dtype  # dtype None: each tensor's stored one
        d = config.hidden_size
        self.heads = config.num_attention_heads
        self.hd = getattr(config, "head_dim", None) or d // self.heads
        # float32 math: its error (~1e-7 relative over d-term sums) is far below bf16's rounding of the result
        math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.q = random_hadamard(d, seed, math_dtype)
        self.r2 = random_hadamard(self.hd, seed + 1, math_dtype)
        self.tied = "lm_head.weight" not in ckpt
        self.weight_map = dict(ckpt.weight_map)
        if self.tied:
            self.weight_map["lm_head.weight"] = self.weight_map["model.embed_tokens.weight"]

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def nbytes(self) -> int:
        return self.ckpt.nbytes()

    def get(self, key: str) -> torch.Tensor:
        stored = self.ckpt.get("model.embed_tokens.weight" if key == "lm_head.weight" and self.tied else key)
        t = self._rotated(key, stored)
        return t.to(self.dtype or stored.dtype) if t.is_floating_point() else t

    def _rotated(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """The rotated tensor in the math dtype (unchanged tensors as stored)."""
        if key == "lm_head.weight":
            return rotate_reader(t, self.q, self.ckpt.get("model.norm.weight"))
        if key == "model.embed_tokens.weight":
            return self.q.right(t)
        if key == "model.norm.weight" or key.endswith(NORMS):
            return torch.ones_like(t)
        prefix, _, suffix = key.partition(".layers.")
        layer, _, name = suffix.partition(".")
        if name in READERS:
            out = rotate_reader(t, self.q, self.ckpt.get(f"{prefix}.layers.{layer}.{READERS[name]}.weight"))
            return rotate_v_heads(out, self.r2) if name.startswith("self_attn.v_proj") else out
        if name == "self_attn.v_proj.bias":
            return rotate_v_heads(t, self.r2)
        if name in WRITERS:
            return rotate_writer(rotate_o_heads(t, self.r2) if name.startswith("self_attn.o_proj") else t, self.q)
        if name.endswith("proj.bias") and name.split(".")[1] in ("o_proj", "down_proj"):
            raise ValueError(f"{key}: a residual writer's bias would need rotating too; not supported")
        return t
