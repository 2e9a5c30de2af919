"""A compact decoder for serving: the Llama family (Llama, Mistral, Qwen2), Qwen3 and Gemma 3 text.

RMSNorm (Gemma's (1 + w) folded into the weight at load), rotary embeddings with the config's scaling
(Gemma 3: a local base for its sliding-window layers), grouped-query attention over a paged KV cache
with per-layer sliding windows, per-head q/k RMSNorms (Qwen3, Gemma 3),
SwiGLU or GeGLU (gelu-tanh) MLP, Gemma's sandwich norms, scaled embeddings and final-logit soft-capping,
tied or untied embeddings, optional q/k/v bias. Which architecture has which is llmpress.layout's table. Linear
layers are `linear.QuantizedWeight`s, so int4 / int8 / fp8 stay compressed in memory.

The forward pass takes a *flattened* batch, as nano-vllm and vLLM do: the new tokens
of every scheduled sequence are concatenated into one [T] vector, so each Linear runs
once per step over all T rows (decode rows of many sequences plus prefill chunks)
and reads its weights once. Attention is the only per-sequence part: decode rows go
to one paged decode kernel, prefill chunks attend to their own cached context.

The fused C++ / Triton kernels know Llama's layer; the other parts (q/k norms, gelu-tanh, windowed or
decode attention once the window binds) run as torch ops (ops.py).
Gemma 3's attn_logit_softcapping is not applied, as transformers' Gemma3Attention does not apply it (Gemma 3
replaced Gemma 2's soft-capping with the q/k norms).
"""
from __future__ import annotations

import math
from types import ModuleType
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import LlmpressError
from ..layout import LAYOUTS, OTHER_ENGINES, Layout, layout_of
from . import extension, ops

SUPPORTED_ARCHITECTURES = tuple(LAYOUTS)
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}  # config name -> ours


class UnsupportedArchitecture(LlmpressError, ValueError):
    """A config the embedded engine cannot run; the message names the way out."""


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
    layer_windows: tuple[int | None, ...] = ()  # per layer: its sliding window, None for global attention
    local_rope_theta: float | None = None  # rope base of the sliding-window layers when theirs differs (Gemma 3)
    local_rope_scaling: dict | None = None
    activation: str = "silu"  # of the gate: silu (SwiGLU) or gelu_tanh (GeGLU)
    query_pre_attn_scalar: float | None = None  # attention scale 1/sqrt(this) instead of 1/sqrt(head_dim)
    final_softcap: float | None = None  # output logits -> cap * tanh(logits / cap) (Gemma)
    embed_scale: float | None = None  # embeddings times this (Gemma: sqrt(hidden))

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.architecture]

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window

    def local_rope(self, layer: int) -> bool:
        """Whether this layer rotates with the local (sliding-window) rope base."""
        return self.local_rope_theta is not None and self.window(layer) is not None

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        """From a Hugging Face config.json dict (transformers 4.x and 5.x spellings)."""
        arch = (cfg.get("architectures") or ["?"])[0]
        lay = layout_of(arch)
        if lay is None:
            raise UnsupportedArchitecture(
                f"architecture {arch!r} is not supported by the embedded engine "
                f"(it runs {', '.join(SUPPORTED_ARCHITECTURES)}); {OTHER_ENGINES}"
            )
        act_name = cfg.get("hidden_activation") or cfg.get("hidden_act") or lay.activation
        if ACTIVATIONS.get(act_name) != ACTIVATIONS[lay.activation]:
            raise UnsupportedArchitecture(
                f"{arch} with hidden_act {act_name!r} is not supported by the embedded engine "
                f"({lay.activation} only); {OTHER_ENGINES}")
        if cfg.get("use_bidirectional_attention"):
            raise UnsupportedArchitecture(f"{arch} with use_bidirectional_attention is not a causal decoder; "
                                          f"{OTHER_ENGINES}")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        local = None
        if "full_attention" in rope:  # transformers 5 spells per-layer-type ropes (Gemma 3) as a dict of dicts
            rope, local = dict(rope["full_attention"]), dict(rope.get("sliding_attention") or {})
        elif "rope_local_base_freq" in cfg:  # transformers 4's Gemma 3
            local = {"rope_theta": cfg["rope_local_base_freq"]}
        elif lay.local_rope_theta is not None:
            local = {}
        theta, scaling = _rope(cfg, rope, lay.rope_theta)
        local_theta, local_scaling = (None, None) if local is None else _rope({}, local, lay.local_rope_theta)
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        windows = _layer_windows(cfg, lay)
        cap = cfg.get("final_logit_softcapping")
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
            qkv_bias=bool(cfg.get("attention_bias", lay.qkv_bias)),
            sliding_window=next((w for w in windows if w is not None), None),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            layer_windows=windows,
            local_rope_theta=local_theta,
            local_rope_scaling=local_scaling,
            activation=ACTIVATIONS[lay.activation],
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
            final_softcap=float(cap) if cap else None,
            embed_scale=cfg["hidden_size"] ** 0.5 if lay.embed_scale else None,
        )


def _rope(cfg: dict, rope: dict, default_theta: float) -> tuple[float, dict | None]:
    """(base, scaling or None) from one rope dict (transformers 5's rope_parameters, 4's rope_scaling)."""
    theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or default_theta)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    return theta, None if rope_type in (None, "default") else {**rope, "rope_type": rope_type}


def _layer_windows(cfg: dict, lay: Layout) -> tuple[int | None, ...]:
    """Each layer's sliding window, as transformers assigns them: config.layer_types where given; else
    Gemma 3's sliding_window_pattern (every pattern-th layer global), or use_sliding_window (Mistral's
    default: on) from max_window_layers on (Qwen2)."""
    n, window = cfg["num_hidden_layers"], cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if types is None and window:
        if "sliding_window_pattern" in cfg or lay.local_rope_theta is not None:
            pattern = cfg.get("sliding_window_pattern", 6)
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
        elif cfg.get("use_sliding_window", lay.sliding_window):
            first = cfg.get("max_window_layers", 0) if "use_sliding_window" in cfg else 0
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    if not window or types is None:
        return (None,) * n
    return tuple(window if t == "sliding_attention" else None for t in types)


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the attention-logit factor for the config's
    rope scaling: default, linear (positions / factor), llama3 (Meta's wavelength-banded
    scaling, Llama 3.1) and yarn (Peng et al. 2023, NTK-by-parts + mscale). local: the
    sliding-window layers' rope (Gemma 3's local base)."""
    d = cfg.head_dim
    theta = cfg.local_rope_theta if local else cfg.rope_theta
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    s = cfg.local_rope_scaling if local else cfg.rope_scaling
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
            return (d * math.log(old / (rot * 2 * math.pi))) / (2 * math.log(theta))

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
    the first layer), and returns the same pair for the next layer.

    w: the layer's tensors, norms under their checkpoint names (layout.Layout.norms), "qkv",
    "o_proj", "gate_up", "down_proj" weights, and "qkv_bias", "q_norm", "k_norm" where present."""

    def __init__(self, cfg: ModelConfig, w: dict, index: int = 0):
        self.cfg = cfg
        lay = cfg.layout
        self.attn_in, self.mlp_in = w[lay.attn_in], w[lay.mlp_in]
        self.attn_out = w[lay.attn_out] if lay.attn_out else None  # Gemma's norms of each branch's output
        self.mlp_out = w[lay.mlp_out] if lay.mlp_out else None
        self.q_norm, self.k_norm = w.get("q_norm"), w.get("k_norm")  # [D] each, or None
        self.qkv, self.o = w["qkv"], w["o_proj"]
        self.qkv_bias = w.get("qkv_bias")  # [(H + 2 KVH) D] or None
        self.gate_up, self.down = w["gate_up"], w["down_proj"]
        self.window = cfg.window(index)
        self.rope = int(cfg.local_rope(index))  # which of Model's rope tables: 0 global, 1 local

    @property
    def norms(self) -> list[torch.Tensor]:
        return [t for t in (self.attn_in, self.attn_out, self.mlp_in, self.mlp_out, self.q_norm, self.k_norm)
                if t is not None]

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None, meta: BatchMeta, cache: "KVLayer",
                cos: torch.Tensor, sin: torch.Tensor, scale: float, ext=None) -> tuple[torch.Tensor, torch.Tensor]:
        """ext: the extension, on decode steps whose inputs Model._decode_ext checked once. Its ops have
        ops.py's names and arguments, and ops.py's wrappers re-check dtypes, devices and layouts on
        every call (~5 us each, ~150 calls a step), so those steps call it directly."""
        c = self.cfg
        o = ops if ext is None else ext
        T = x.shape[0]
        eps = c.rms_norm_eps
        h = o.rms_norm(x, self.attn_in, eps) if delta is None else o.add_rms_norm_(x, delta, self.attn_in, eps)
        qkv = self.qkv(h)  # [T, (H + 2 KVH) D]
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias
        if self.q_norm is not None:
            qkv = self._qk_norm(qkv)
        q = o.rope_qkv_cache_(qkv, cos, sin, cache.k, cache.v, meta.slot_mapping, c.num_heads, c.num_kv_heads)  # [T, H, D]
        # Past its window, decode attention runs ops' windowed torch version (the kernels attend to the whole
        # context). meta.max_position bounds every context length: ctx = position + 1.
        masked = self.window is not None and meta.max_position >= self.window
        decode = (o.decode_attention if not masked else
                  lambda *a: ops.decode_attention_window(*a, window=self.window))
        if meta.all_decode:  # the common steady state: skip the scatter/gather of rows
            attn = decode(q, cache.k, cache.v, meta.decode_tables, meta.decode_lens, scale)
        else:
            attn = q.new_empty(q.shape)  # [T, H, D]
        if meta.decode_rows is not None and not meta.all_decode:
            decode = ops.decode_attention if not masked else decode
            attn[meta.decode_rows] = decode(q[meta.decode_rows], cache.k, cache.v, meta.decode_tables,
                                            meta.decode_lens, scale)
        for s in meta.prefill:
            attn[s.start : s.start + s.n] = prefill_attention(q[s.start : s.start + s.n], cache, s, scale, self.window)
        a = self.o(attn.reshape(T, -1))  # [T, hidden]
        if self.attn_out is not None:
            a = o.rms_norm(a, self.attn_out, eps)
        h = o.add_rms_norm_(x, a, self.mlp_in, eps)
        gate_up = self.gate_up(h)  # [T, 2I]
        m = self.down(o.silu_mul(gate_up) if c.activation == "silu" else ops.gelu_tanh_mul(gate_up))
        if self.mlp_out is not None:
            m = o.rms_norm(m, self.mlp_out, eps)
        return x, m

    def _qk_norm(self, qkv: torch.Tensor) -> torch.Tensor:
        """RMSNorm of every q and k head over its D features (Qwen3, Gemma 3: before the rotary embedding)."""
        c = self.cfg
        T, H, KVH = qkv.shape[0], c.num_heads, c.num_kv_heads
        q, k, v = qkv.view(T, H + 2 * KVH, c.head_dim).split([H, KVH, KVH], 1)
        q = ops.rms_norm(q.reshape(T * H, -1), self.q_norm, c.rms_norm_eps).view(T, H, -1)
        k = ops.rms_norm(k.reshape(T * KVH, -1), self.k_norm, c.rms_norm_eps).view(T, KVH, -1)
        return torch.cat([q, k, v], 1).view(T, -1)


# Prefill attention on the CPU computes its scores in chunks of query rows of at most this many
# floats (64 MiB): a 4k-token prompt's whole [H, n, ctx] score matrix would be 2 GiB at 32 heads.
_SCORE_CHUNK_FLOATS = 1 << 24


def _prefill_mask(n: int, ctx: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[n, ctx] bool, True where query i (position ctx - n + i) attends to key j: causal, offset by the
    cached prefix, and within `window` keys of the query where given (transformers'
    sliding_window_overlay: q - k < window)."""
    qpos = torch.arange(ctx - n, ctx, device=device).unsqueeze(1)
    kpos = torch.arange(ctx, device=device).unsqueeze(0)
    mask = kpos <= qpos
    if window is not None:
        mask &= kpos > qpos - window
    return mask


def prefill_attention(q: torch.Tensor, cache: "KVLayer", s: AttnSegment, scale: float,
                      window: int | None) -> torch.Tensor:
    """q [n, H, D] for positions [ctx-n, ctx) against the sequence's cached keys [0, ctx) -> [n, H, D].

    float32 on the CPU: `grouped_attention`, three batched GEMMs per chunk of query rows (the query
    heads that share a KV head stacked as rows of one GEMM). torch's scaled_dot_product_attention
    takes its math path here (an explicit mask and GQA), ~12 ops over the [H, n, ctx] scores, and
    was ~60% of a 2-layer 8B-shape prefill's non-GEMM time (benchmarks/README.md, issue 17). Other
    devices and dtypes: `prefill_attention_reference`."""
    k, v = cache.gather(s.block_table, s.ctx_len)  # [ctx, KVH, D]
    if not (q.is_cpu and q.dtype == k.dtype == torch.float32):
        return prefill_attention_reference(q, k, v, scale, window)
    n, H, _ = q.shape
    ctx = s.ctx_len
    rows = max(1, _SCORE_CHUNK_FLOATS // (H * ctx))
    if rows >= n:
        return grouped_attention(q, k, v, _prefill_mask(n, ctx, window, q.device), scale)
    out = q.new_empty(q.shape)
    mask = _prefill_mask(n, ctx, window, q.device)
    for i in range(0, n, rows):  # a chunk attends only to keys up to its last query
        j = min(n, i + rows)
        last = ctx - n + j
        out[i:j] = grouped_attention(q[i:j], k[:last], v[:last], mask[i:j, :last], scale)
    return out


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """softmax(q k^T scale + mask) v, q [n, H, D], k, v [ctx, KVH, D], mask bool [n, ctx] (True:
    attend; every row needs one) -> [n, H, D]. Query head h reads KV head h // (H / KVH)."""
    n, H, D = q.shape
    ctx, KVH = k.shape[0], k.shape[1]
    G = H // KVH
    qg = q.reshape(n, KVH, G, D).permute(1, 2, 0, 3).reshape(KVH, G * n, D)  # row g n + i: head KVH-group g, query i
    bias = torch.zeros(n, ctx, dtype=q.dtype, device=q.device).masked_fill_(~mask, -math.inf)
    scores = torch.baddbmm(bias.repeat(G, 1), qg, k.permute(1, 2, 0), alpha=scale)  # [KVH, G n, ctx]
    out = torch.bmm(torch.softmax(scores, -1), v.transpose(0, 1))  # [KVH, G n, D]
    return out.view(KVH, G, n, D).permute(2, 0, 1, 3).reshape(n, H, D)


def prefill_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                                window: int | None) -> torch.Tensor:
    """torch's scaled_dot_product_attention, q [n, H, D] (the last n of ctx positions), k, v [ctx, KVH, D]."""
    n, ctx = q.shape[0], k.shape[0]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=_prefill_mask(n, ctx, window, q.device),
        scale=scale, enable_gqa=q.shape[1] != k.shape[1],
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
    def __init__(self, cfg: ModelConfig, embed: torch.Tensor, layers: list[Layer], norm: torch.Tensor, lm_head,
                 dtype: torch.dtype):
        self.cfg, self.embed, self.layers, self.norm, self.lm_head = cfg, embed, layers, norm, lm_head
        self.dtype = dtype
        # rope tables: [0] global, [1] the sliding-window layers' own (Gemma 3's local base), if any layer uses it
        local = any(layer.rope for layer in layers)
        self.ropes = [rope_inv_freq(cfg)] + ([rope_inv_freq(cfg, local=True)] if local else [])
        q = cfg.query_pre_attn_scalar  # Gemma's attention scale, written as transformers writes it
        self.scale = q ** -0.5 if q is not None else 1.0 / math.sqrt(cfg.head_dim)
        # Gemma's embedding scale, rounded to the activations' dtype as transformers rounds it to the weights'
        self.embed_scale = None if cfg.embed_scale is None else torch.tensor(cfg.embed_scale, dtype=dtype).item()
        self._rope_len = 0
        self._tables: list[tuple[torch.Tensor, torch.Tensor]] = []  # per rope: cos, sin [rope_len, D/2]
        # The extension for direct calls in decode steps, or None (reference ops); decided once, on the first
        # decode step (_decode_ext), when _decode_decided turns True.
        self._decode_decided = False
        self._decode_kernels: ModuleType | None = None

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def reserve_rope(self, need: int) -> None:
        """Make the cos / sin tables cover positions [0, need), growing in powers of two. A CUDA graph
        captures the tables' addresses, so the engine reserves max_model_len before capturing."""
        if need > self._rope_len:
            n = max(1 << (need - 1).bit_length(), 256)
            pos = torch.arange(n, dtype=torch.float32)
            self._tables = []
            for inv_freq, mscale in self.ropes:
                ang = torch.outer(pos, inv_freq).to(self.device)
                self._tables.append(((ang.cos() * mscale).to(self.dtype), (ang.sin() * mscale).to(self.dtype)))
            self._rope_len = n

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, meta: BatchMeta, cache: list[KVLayer]) -> torch.Tensor:
        """input_ids [T] -> final hidden states [T, hidden] (normalised)."""
        x = F.embedding(input_ids.to(self.device), self.embed).to(self.dtype)  # the residual stream, updated in place
        if self.embed_scale is not None:
            x.mul_(self.embed_scale)
        self.reserve_rope(meta.max_position + 1)
        ropes = [(cos[meta.positions], sin[meta.positions]) for cos, sin in self._tables]  # [T, D/2] each
        ext = self._decode_ext(cache) if meta.all_decode else None
        delta = None
        for layer, kv in zip(self.layers, cache):
            x, delta = layer.forward(x, delta, meta, kv, *ropes[layer.rope], self.scale, ext)
        eps = self.cfg.rms_norm_eps
        return ops.rms_norm(x, self.norm, eps) if delta is None else ops.add_rms_norm_(x, delta, self.norm, eps)

    def _decode_ext(self, cache: list["KVLayer"]) -> ModuleType | None:
        """The extension when a decode step can call its ops directly (what ops.py checks per call):
        float32 activations, norms and KV cache on the CPU, a head size the rotary kernel takes."""
        if not self._decode_decided:  # decided once per model
            ok = self.dtype == torch.float32 and self.cfg.head_dim % 16 == 0 and all(
                t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                for layer in self.layers for t in layer.norms)
            self._decode_kernels = extension.load() if ok and extension.available() else None
            self._decode_decided = True
        kv = cache[0].k
        if self._decode_kernels is None or not (kv.dtype == torch.float32 and kv.device.type == "cpu" and kv.is_contiguous()):
            return None
        return self._decode_kernels

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [R, hidden] -> float32 logits [R, vocab], soft-capped where the config says (Gemma)."""
        logits = self.lm_head(hidden).float()
        if (cap := self.cfg.final_softcap) is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def set_prefill_dtype(self, dtype: torch.dtype) -> None:
        """The activations' dtype in every CPU linear's dequantize + GEMM path (QuantizedWeight.prefill_dtype)."""
        for w in [self.lm_head] + [w for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]:
            for part in getattr(w, "parts", [w]):  # loader.Concat holds several
                part.prefill_dtype = dtype

    def weight_bytes(self) -> dict[str, int]:
        """Resident bytes: decoder-layer linears, and embeddings + lm_head apart."""
        linears = sum(w.nbytes for layer in self.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down))
        norms = sum(t.numel() * t.element_size() for layer in self.layers for t in layer.norms)
        embed = self.embed.numel() * self.embed.element_size()
        head = 0 if self.cfg.tie_word_embeddings and getattr(self.lm_head, "shares_embedding", False) else self.lm_head.nbytes
        return {"linears": linears, "norms": norms, "embedding": embed, "lm_head": head}
