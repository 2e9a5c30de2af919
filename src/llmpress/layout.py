"""The decoder layouts llmpress knows, in one place: module names, fused groups, which norm feeds
which Linears, and each architecture's particulars. compress (targets.py, sequential.py, oneshot.py)
and the engine (loader.py, model.py) read them from here; adding an architecture is one `Layout`.

This module sits below compress and engine and imports neither (nor torch): it is data.

Every layout here is a pre-norm decoder layer in transformers' naming,

    h = attn_in(x);  a = o_proj(attention(q_proj(h), k_proj(h), v_proj(h)))
    x = x + attn_out(a)                                    # attn_out: identity unless the layout has one
    h = mlp_in(x);   m = down_proj(act(gate_proj(h)) * up_proj(h))
    x = x + mlp_out(m)

with optional per-head q/k RMSNorms before the rotary embedding (Qwen3, Gemma 3).
"""
from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------ module names (Llama family)
Q_PROJ, K_PROJ, V_PROJ, O_PROJ = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
GATE_PROJ, UP_PROJ, DOWN_PROJ = "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
Q_NORM, K_NORM = "self_attn.q_norm", "self_attn.k_norm"

# Linears that read the same input, run as one fused weight by the engine and quantized as one
# group by compress's staged path, in the order the layer computes them.
QKV = (Q_PROJ, K_PROJ, V_PROJ)
O = (O_PROJ,)
GATE_UP = (GATE_PROJ, UP_PROJ)
DOWN = (DOWN_PROJ,)
GROUPS = (QKV, O, GATE_UP, DOWN)


@dataclass(frozen=True)
class Layout:
    """One decoder architecture (config.json's `architectures[0]`) as the engine runs it.

    attn_in / mlp_in: the norms whose outputs q/k/v and gate/up read (SmoothQuant folds into them);
    attn_out / mlp_out: norms on each branch's output before the residual add (Gemma 2/3's
    "sandwich" norms), None when absent. norm_offset: the norms scale by (1 + w) (Gemma)."""

    architecture: str
    decoder_layer: str  # transformers' decoder layer class
    attn_in: str = "input_layernorm"
    attn_out: str | None = None
    mlp_in: str = "post_attention_layernorm"
    mlp_out: str | None = None
    qk_norm: bool = False  # per-head RMSNorm of q and k before the rotary embedding (Qwen3, Gemma 3)
    norm_offset: bool = False  # Gemma's RMSNorm: x_hat * (1 + w)
    activation: str = "silu"  # of gate in act(gate) * up; config's hidden_act / hidden_activation
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden), rounded to the weights' dtype
    rope_theta: float = 10000.0  # rope base when config.json does not say
    local_rope_theta: float | None = None  # sliding-window layers' own rope base, when they have one (Gemma 3)
    qkv_bias: bool = False  # q/k/v biases when config.json does not say (attention_bias)
    sliding_window: bool = False  # config's sliding_window applies without use_sliding_window (Mistral)
    staged: bool = False  # compress/sequential.py reproduces this layer exactly (no q/k norms, no extra norms)

    @property
    def norms(self) -> tuple[str, ...]:
        """The layer's norm modules, in the order the layer applies them."""
        return tuple(n for n in (self.attn_in, self.attn_out, self.mlp_in, self.mlp_out) if n)

    @property
    def norm_readers(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(norm, the Linears that read its output): the SmoothQuant pairs. v -> o is apart."""
        return ((self.attn_in, QKV), (self.mlp_in, GATE_UP))


_GEMMA_NORMS = dict(attn_out="post_attention_layernorm", mlp_in="pre_feedforward_layernorm",
                    mlp_out="post_feedforward_layernorm", norm_offset=True)

LAYOUTS: dict[str, Layout] = {lay.architecture: lay for lay in (
    Layout("LlamaForCausalLM", "LlamaDecoderLayer", staged=True),
    Layout("MistralForCausalLM", "MistralDecoderLayer", sliding_window=True, staged=True),
    Layout("Qwen2ForCausalLM", "Qwen2DecoderLayer", qkv_bias=True, staged=True),
    Layout("Qwen3ForCausalLM", "Qwen3DecoderLayer", qk_norm=True),
    Layout("Gemma3ForCausalLM", "Gemma3DecoderLayer", qk_norm=True, activation="gelu_pytorch_tanh",
           embed_scale=True, rope_theta=1_000_000.0, local_rope_theta=10_000.0, **_GEMMA_NORMS),
)}

# Decoder layers compress's true-sequential path handles (sequential.py).
STAGED_LAYERS = tuple(lay.decoder_layer for lay in LAYOUTS.values() if lay.staged)

# Every (norm, readers) pair any known layout has, in a fixed order: the generic calibration path
# looks for these in layers of any architecture and folds only those it verifies.
NORM_READERS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(dict.fromkeys(
    pair for lay in LAYOUTS.values() for pair in lay.norm_readers))

# Architectures other tools run: named in the engine's refusal.
OTHER_ENGINES = ("serve or bench it with --engine vllm, evaluate it with --backend vllm, "
                 "or run it with transformers (llmpress ppl reads any architecture)")


def layout_of(architecture: str) -> Layout | None:
    """The layout of a config.json `architectures[0]`, or None when the engine cannot run it."""
    return LAYOUTS.get(architecture)
