"""A compact Llama-family decoder (Llama, Mistral, Qwen2) for serving.

RMSNorm, rotary embeddings with the config's scaling, grouped-query attention over a
paged KV cache, SwiGLU MLP, tied or untied embeddings, optional q/k/v bias. Linear
layers are `kernels.QuantizedWeight`s, so int4 / int8 / fp8 stay compressed in memory.

The forward pass takes a *flattened* batch, as nano-vllm and vLLM do: the new tokens
of every scheduled sequence are concatenated into one [T] vector, so each Linear runs
once per step over all T rows (decode rows of many sequences plus prefill chunks)
and reads its weights once. Attention is the only per-sequence part: decode rows go
to one paged decode kernel, prefill chunks attend to their own cached context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import kernels, ops

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        """From a Hugging Face config.json dict (transformers 4.x and 5.x spellings)."""
        arch = (cfg.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"architecture {arch!r} is not supported by the embedded engine "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); use --engine vllm for others"
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None if rope_type in (None, "default") else {**rope, "rope_type": rope_type}
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        # Mistral-style sliding window only matters past the window; Qwen2 disables it by default.
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", arch == "MistralForCausalLM") else None
        return cls(
            architecture=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", arch == "Qwen2ForCausalLM")),
            sliding_window=window,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the attention-logit factor for the config's
    rope scaling: default, linear (positions / factor), llama3 (Meta's wavelength-banded
    scaling, Llama 3.1) and yarn (Peng et al. 2023, NTK-by-parts + mscale)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    s = cfg.rope_scaling
    if s is None:
        return inv.float(), 1.0
    kind, factor = s["rope_type"], float(s.get("factor", 1.0))
    if kind == "linear":
        return (inv / factor).float(), 1.0
    if kind == "llama3":
        lo, hi = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
        old = float(s.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = ((old / wavelen) - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled).float(), 1.0
    if kind == "yarn":
        old = float(s.get("original_max_position_embeddings", cfg.max_position_embeddings))
        beta_fast, beta_slow = float(s.get("beta_fast", 32)), float(s.get("beta_slow", 1))

        def dim_of(rot: float) -> float:  # the dimension whose wavelength makes `rot` turns in `old`
            return (d * math.log(old / (rot * 2 * math.pi))) / (2 * math.log(cfg.rope_theta))

        low, high = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), d - 1)
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        extrapolate = 1 - ramp
        inv = inv / factor * (1 - extrapolate) + inv * extrapolate
        mscale = float(s.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0))
        return inv.float(), mscale
    raise ValueError(f"rope scaling {kind!r} is not supported (default, linear, llama3, yarn)")


@dataclass
class AttnSegment:
    """One sequence's slice of the flattened batch: rows [start, start+n) are its new
    tokens at positions [ctx_len-n, ctx_len); its KV lives in `block_table`."""

    start: int
    n: int
    ctx_len: int
    block_table: list[int]


@dataclass
class BatchMeta:
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64: flat cache slot of each new token
    segments: list[AttnSegment]
    decode_rows: torch.Tensor | None = None  # [B] rows that are single-token decodes
    decode_tables: torch.Tensor | None = None  # [B, max_blocks] int32
    decode_lens: torch.Tensor | None = None  # [B] int32
    prefill: list[AttnSegment] = field(default_factory=list)
    all_decode: bool = False  # every row is a single-token decode, rows in segment order
    max_position: int = 0  # max(positions), known on the host: no device sync to size the rope table

    @classmethod
    def build(cls, positions: list[int], slots: list[int], segments: list[AttnSegment],
              device: torch.device | str = "cpu") -> "BatchMeta":
        """From host lists; the tensors go to `device` (the model's) in one small copy each."""
        def t(v, dtype=torch.int64):
            return torch.tensor(v, dtype=dtype, device=device)

        meta = cls(t(positions), t(slots), segments, max_position=max(positions))
        dec = [s for s in segments if s.n == 1]
        meta.prefill = [s for s in segments if s.n > 1]
        if dec:
            width = max(len(s.block_table) for s in dec)
            meta.decode_rows = t([s.start for s in dec])
            meta.decode_tables = t([s.block_table + [0] * (width - len(s.block_table)) for s in dec], torch.int32)
            meta.decode_lens = t([s.ctx_len for s in dec], torch.int32)
            meta.all_decode = len(dec) == len(positions)
        return meta


class Layer:
    """One decoder layer; q/k/v and gate/up are fused into single weights at load time.

    The residual adds are fused into the following RMSNorm (ops.add_rms_norm_): a layer takes
    the residual stream x and the previous layer's MLP output not yet added to it (None before
    the first layer), and returns the same pair for the next layer."""

    def __init__(self, cfg: ModelConfig, w: dict):
        self.cfg = cfg
        self.input_norm, self.post_norm = w["input_layernorm"], w["post_attention_layernorm"]
        self.qkv, self.o = w["qkv"], w["o_proj"]
        self.qkv_bias = w.get("qkv_bias")  # [(H + 2 KVH) D] or None
        self.gate_up, self.down = w["gate_up"], w["down_proj"]

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None, meta: BatchMeta, cache: "KVLayer",
                cos: torch.Tensor, sin: torch.Tensor, scale: float, ext=None) -> tuple[torch.Tensor, torch.Tensor]:
        """ext: the extension, on decode steps whose inputs Model._decode_ext checked once. Its ops have
        ops.py's names and arguments, and ops.py's wrappers re-check dtypes, devices and layouts on
        every call (~5 us each, ~150 calls a step), so those steps call it directly."""
        c = self.cfg
        o = ops if ext is None else ext
        T = x.shape[0]
        eps = c.rms_norm_eps
        h = o.rms_norm(x, self.input_norm, eps) if delta is None else o.add_rms_norm_(x, delta, self.input_norm, eps)
        qkv = self.qkv(h)  # [T, (H + 2 KVH) D]
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias
        q = o.rope_qkv_cache_(qkv, cos, sin, cache.k, cache.v, meta.slot_mapping, c.num_heads, c.num_kv_heads)  # [T, H, D]
        if meta.all_decode:  # the common steady state: skip the scatter/gather of rows
            attn = o.decode_attention(q, cache.k, cache.v, meta.decode_tables, meta.decode_lens, scale)
        else:
            attn = q.new_empty(q.shape)  # [T, H, D]
        if meta.decode_rows is not None and not meta.all_decode:
            attn[meta.decode_rows] = ops.decode_attention(
                q[meta.decode_rows], cache.k, cache.v, meta.decode_tables, meta.decode_lens, scale
            )
        for s in meta.prefill:
            attn[s.start : s.start + s.n] = prefill_attention(q[s.start : s.start + s.n], cache, s, scale, c.sliding_window)
        h = o.add_rms_norm_(x, self.o(attn.reshape(T, -1)), self.post_norm, eps)
        return x, self.down(o.silu_mul(self.gate_up(h)))


def prefill_attention(q: torch.Tensor, cache: "KVLayer", s: AttnSegment, scale: float, window: int | None) -> torch.Tensor:
    """q [n, H, D] for positions [ctx-n, ctx) against the sequence's cached keys [0, ctx)."""
    k, v = cache.gather(s.block_table, s.ctx_len)  # [ctx, KVH, D]
    n, ctx = q.shape[0], s.ctx_len
    qpos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)
    kpos = torch.arange(ctx, device=q.device).unsqueeze(0)
    mask = kpos <= qpos  # [n, ctx] causal, offset by the cached prefix
    if window is not None:
        mask &= kpos > qpos - window
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )  # [H, n, D]
    return out.transpose(0, 1)


class KVLayer:
    """One layer's paged cache: k, v [num_blocks, block_size, KVH, D]."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v
        self.block_size = k.shape[1]

    def gather(self, table: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n cached tokens of a sequence, [n, KVH, D] each."""
        idx = torch.tensor(table[: -(-n // self.block_size)], device=self.k.device)
        k = self.k[idx].flatten(0, 1)[:n]
        v = self.v[idx].flatten(0, 1)[:n]
        return k, v


class Model:
    def __init__(self, cfg: ModelConfig, embed: torch.Tensor, layers: list[Layer], norm: torch.Tensor, lm_head, dtype: torch.dtype):
        self.cfg, self.embed, self.layers, self.norm, self.lm_head = cfg, embed, layers, norm, lm_head
        self.dtype = dtype
        inv_freq, self.mscale = rope_inv_freq(cfg)
        self.inv_freq = inv_freq
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self._rope_len = 0
        self._cos = self._sin = torch.empty(0)
        self._decode_kernels = False  # the extension or None, decided on the first decode step (_decode_ext)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def reserve_rope(self, need: int) -> None:
        """Make the cos / sin tables cover positions [0, need), growing in powers of two. A CUDA graph
        captures the table's address, so the engine reserves max_model_len before capturing."""
        if need > self._rope_len:
            n = max(1 << (need - 1).bit_length(), 256)
            ang = torch.outer(torch.arange(n, dtype=torch.float32), self.inv_freq).to(self.device)
            self._cos, self._sin = (ang.cos() * self.mscale).to(self.dtype), (ang.sin() * self.mscale).to(self.dtype)
            self._rope_len = n

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, meta: BatchMeta, cache: list[KVLayer]) -> torch.Tensor:
        """input_ids [T] -> final hidden states [T, hidden] (normalised)."""
        x = F.embedding(input_ids.to(self.device), self.embed).to(self.dtype)  # the residual stream, updated in place
        self.reserve_rope(meta.max_position + 1)
        cos, sin = self._cos[meta.positions], self._sin[meta.positions]  # [T, D/2] each
        ext = self._decode_ext(cache) if meta.all_decode else None
        delta = None
        for layer, kv in zip(self.layers, cache):
            x, delta = layer.forward(x, delta, meta, kv, cos, sin, self.scale, ext)
        eps = self.cfg.rms_norm_eps
        return ops.rms_norm(x, self.norm, eps) if delta is None else ops.add_rms_norm_(x, delta, self.norm, eps)

    def _decode_ext(self, cache: list["KVLayer"]):
        """The extension when a decode step can call its ops directly (what ops.py checks per call):
        float32 activations, norms and KV cache on the CPU, a head size the rotary kernel takes."""
        if self._decode_kernels is False:  # decided once per model
            ok = self.dtype == torch.float32 and self.cfg.head_dim % 16 == 0 and all(
                t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                for layer in self.layers for t in (layer.input_norm, layer.post_norm))
            self._decode_kernels = kernels._extension() if ok and kernels.available() else None
        kv = cache[0].k
        if self._decode_kernels is None or not (kv.dtype == torch.float32 and kv.device.type == "cpu" and kv.is_contiguous()):
            return None
        return self._decode_kernels

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [R, hidden] -> float32 logits [R, vocab]."""
        return self.lm_head(hidden).float()

    def weight_bytes(self) -> dict[str, int]:
        """Resident bytes: decoder-layer linears, and embeddings + lm_head apart."""
        linears = sum(w.nbytes for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down))
        norms = sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.input_norm, layer.post_norm))
        embed = self.embed.numel() * self.embed.element_size()
        head = 0 if self.cfg.tie_word_embeddings and getattr(self.lm_head, "shares_embedding", False) else self.lm_head.nbytes
        return {"linears": linears, "norms": norms, "embedding": embed, "lm_head": head}
