"""Predict what `compress` and the engine will need (peak RAM, device memory, disk, wall time)
from a model's config and the run's numbers, before any work, so a run that cannot fit fails
at once with the numbers and the fix instead of being OOM-killed halfway.

Pure functions of (config dict, run numbers, Machine) returning a frozen Estimate. The memory
model follows what compress/oneshot.py, calibrate.py, sequential.py and gptq.py hold at their
peaks (see _compress_phases); the engine's follows engine/loader.py and cache.py. The constants
marked "measured" were fitted to peak RSS (/usr/bin/time -v) and wall time of real runs on a
2-core AMD EPYC (Zen 4): the default model and 2-layer synth models of the 8B shape
(benchmarks/plan_accuracy.py re-measures them). Time uses two measured matmul rates, bf16 for the
calibration forward and its Hessian products, float32 for GPTQ's factorizations and updates: on an
AMX Xeon they are 5x apart, and one rate for both put a 32-layer 8B GPTQ at half its time.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LlmpressError

GiB = 1 << 30
# Named accelerators: memory and dense bf16 matmul peak (vendor datasheets, SXM parts).
GPUS = {"H100": (80 * GiB, 989e12), "H200": (141 * GiB, 989e12), "A100": (80 * GiB, 312e12)}
BASE_RSS = 0.48e9  # measured: python + torch + transformers + the model skeleton on the meta device
SHAREGPT_RSS = 0.3e9  # measured: the ShareGPT dump parsed into rows (load_rows), resident while sampling
SHAREGPT_S = 3.0  # measured: parsing that dump
SLACK = 1.10  # measured: allocator fragmentation and transient copies not modelled term by term
GEMM_EFFICIENCY = 0.55  # measured: the layer math runs at this fraction of the plan-time GEMM benchmark
COLUMN_S = 60e-6  # measured: GPTQ's per-column work beyond its FLOPs (rounding, rank-1 updates), per Linear
MSE_EVALS = 26  # observers.mse_qparams: coarse-to-fine grid evaluations per weight
AWQ_CANDIDATES = 21  # compress/awq.search_scales: s = 1 and 20 duo-scaling ratios
SKIP_ENV = "LLMPRESS_SKIP_PLAN"


class PlanError(LlmpressError, ValueError):
    """A run that cannot fit; the message has the numbers and the fix."""


@dataclass(frozen=True)
class Machine:
    name: str
    ram_available: int  # bytes the run may still allocate
    disk_free: int | None  # bytes free where the output goes (None: not checked)
    cores: int
    gemm_flops: float  # measured matmul rate, FLOP/s: bf16 where faster than float32 (the calibration forward's)
    device: str = "cpu"  # "cpu" | "cuda"
    device_memory: int | None = None  # GPU memory in bytes
    fp32_flops: float = 0.0  # measured float32 matmul rate (GPTQ's factorizations and updates); 0: gemm_flops

    @property
    def fp32_rate(self) -> float:
        return self.fp32_flops or self.gemm_flops


@dataclass(frozen=True)
class Shape:
    """The dimensions that decide memory and time, from a Hugging Face config.json dict."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        heads = cfg["num_attention_heads"]
        return cls(cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], heads,
                   cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   cfg["vocab_size"], bool(cfg.get("tie_word_embeddings", False)))

    @property
    def qkv_out(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    @property
    def layer_linear_params(self) -> int:
        """q, k, v, o, gate, up, down of one layer."""
        h = self.hidden
        return h * self.qkv_out + self.heads * self.head_dim * h + 3 * h * self.intermediate

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def linears(self) -> tuple[tuple[int, int], ...]:
        """(rows, cols) of each quantized Linear of a layer, in GPTQ order."""
        h, i, d = self.hidden, self.intermediate, self.head_dim
        return ((self.heads * d, h), (self.kv_heads * d, h), (self.kv_heads * d, h), (h, self.heads * d),
                (i, h), (i, h), (h, i))


@dataclass(frozen=True)
class Estimate:
    what: str  # "compress W4A16" | "engine"
    peak_ram: int  # bytes, process peak RSS
    peak_phase: str
    terms: tuple[tuple[str, int], ...]  # the peak phase's parts (label, bytes)
    disk: int  # bytes written
    wall_s: float | None
    time_terms: tuple[tuple[str, float], ...] = ()
    peak_device: int | None = None  # GPU memory at the peak, when the run is on a GPU
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"what": self.what, "peak_ram_gb": round(self.peak_ram / 1e9, 2), "peak_phase": self.peak_phase,
                "terms_gb": {k: round(v / 1e9, 3) for k, v in self.terms},
                "peak_device_gb": None if self.peak_device is None else round(self.peak_device / 1e9, 2),
                "disk_gb": round(self.disk / 1e9, 2), "wall_s": None if self.wall_s is None else round(self.wall_s),
                "time_terms_s": {k: round(v, 1) for k, v in self.time_terms}}


# -- compress ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CompressRun:
    """The recipe numbers that decide cost (compress.Recipe's fields)."""

    scheme: str = "W4A16"
    group_size: int | None = 128
    num_samples: int = 128
    max_seq_len: int = 512
    calib_bytes: int = 4  # calibration forward dtype: 4 float32, 2 bfloat16
    source_bytes: int = 2  # the checkpoint's dtype
    gptq: bool = True
    awq: bool = False  # AWQ's scale search first (compress/awq.py): a float forward of each layer, its search
    smooth: bool = False  # SmoothQuant (W8A8)
    smooth_mlp: bool = False  # SmoothQuant up -> down: one more float pass through gate / up
    float_target: bool = False  # GPTQ toward the float model: the float layer's forward and stage inputs kept
    sharegpt: bool = True  # the default dataset's parse cost
    mse: bool = True


def output_bytes(shape: Shape, run: CompressRun) -> int:
    """The compressed checkpoint's size: packed weights + scales of the decoder Linears, the rest as stored."""
    p = shape.layer_linear_params * shape.layers
    bits = 4 if run.scheme.startswith("W4") else 8
    rows = sum(r for r, _ in shape.linears) * shape.layers
    scales = p // run.group_size * 2 if bits == 4 and run.group_size else rows * 2
    if run.scheme == "W4A16_ASYM":
        scales += scales // 4  # packed int4 zero points
    rest = shape.embed_params * (1 if shape.tied else 2) * run.source_bytes
    return p * bits // 8 + scales + rest + 4 * shape.hidden * shape.layers * run.source_bytes


def _compress_phases(shape: Shape, run: CompressRun) -> dict[str, dict[str, int]]:
    """Bytes held at each phase's peak, term by term (see the module docstring)."""
    h, i, cb, sb = shape.hidden, shape.intermediate, run.calib_bytes, run.source_bytes
    tok = run.num_samples * run.max_seq_len  # upper bound: every sample at max_seq_len
    embed_src = shape.embed_params * sb
    layer = (shape.layer_linear_params + 2 * h) * cb  # one layer materialized in the calibration dtype
    phases = {"copy embeddings / lm_head": {"base": BASE_RSS, "largest tensor read": embed_src}}
    wmax = max(r * c for r, c in shape.linears) * 4
    if not run.gptq and not run.awq:  # round-to-nearest (FP8_DYNAMIC): one layer, a float32 weight and its scaled copy
        phases["quantize layer"] = {"base": BASE_RSS, "layer": layer, "weight temporaries": 3 * wmax}
        return phases
    data = SHAREGPT_RSS if run.sharegpt else 0
    x = tok * h * cb
    phases["capture layer-0 inputs"] = {
        "base": BASE_RSS, "calibration rows": data, "embeddings in calibration dtype": shape.embed_params * cb,
        "embeddings as stored": embed_src, "layer-0 inputs": x}
    cols = max(c for _, c in shape.linears)
    wrow = max(r * c for r, c in shape.linears if c == cols) * 4
    hess = 2 * cols * cols * 4  # H + the one buffer its Cholesky factor, inverse and upper factor share (gptq.py)
    phases["GPTQ of down_proj" if run.gptq else "AWQ statistics of down_proj"] = {
        "base": BASE_RSS, "layer": layer, "layer inputs": x, "residual (stage 3)": x,
        "MLP activations [tokens, intermediate]": tok * i * cb, "Hessian + Cholesky (2 x cols^2 float32)": hess,
        "weight (float32 working copy)": wrow}
    if run.float_target:  # down_proj's float inputs, the float model's hidden states in and out, D [cols, cols]
        phases["GPTQ of down_proj"].update({"float reference (float_target)": tok * (i + 2 * h) * cb,
                                            "drift term D (float32)": cols * cols * 4})
    phases["next-layer outputs"] = {"base": BASE_RSS, "layer": layer, "inputs, residual, outputs": 3 * x,
                                    "MLP activations [tokens, intermediate]": tok * i * cb}
    return phases


def compress_flops(shape: Shape, run: CompressRun, on_gpu: bool = False) -> dict[str, float]:
    """FLOPs (and MSE-search element operations) of one compress, by stage."""
    tok = run.num_samples * run.max_seq_len
    per_layer: dict[str, float] = {}
    if run.gptq or run.awq:
        attn = 2 * tok * run.max_seq_len * shape.heads * shape.head_dim  # causal QKᵀ and AV
        per_layer["calibration forward"] = 2 * tok * shape.layer_linear_params + attn
        if run.smooth:  # the extra float attention pass for v -> o smoothing
            per_layer["calibration forward"] += 2 * tok * shape.hidden * shape.qkv_out + attn
        if run.smooth_mlp:  # the extra float gate / up pass for up -> down smoothing, its 9-strength search
            per_layer["calibration forward"] += (2 * tok * 2 * shape.hidden * shape.intermediate
                                                 + 9 * 2 * 4096 * shape.hidden * shape.intermediate)
        ins = (shape.hidden, shape.heads * shape.head_dim, shape.hidden, shape.intermediate)
        per_layer["Hessians"] = sum(2 * tok * c * c * 10 / 16 for c in ins)  # upper block triangle
        # per Linear: Cholesky + triangular inverse on the CPU, Cholesky + inverse + Cholesky on a GPU (gptq.py)
        chol = sum((5 / 3 if on_gpu else 2 / 3) * c**3 for _, c in shape.linears)
        lazy = sum(r * c * c for r, c in shape.linears)  # GPTQ's blocked error updates
        if run.gptq:
            per_layer["GPTQ"] = chol + 2 * lazy
        if run.gptq and run.float_target:  # the float layer's own forward, Σ (x_fp - x)ᵀ x in full, the solves
            per_layer["float reference"] = (2 * tok * shape.layer_linear_params + attn
                                            + sum(2 * tok * c * c for c in ins) + sum(c**3 / 3 for c in ins))
        if run.awq:  # its own float forward with Hessians, then 21 candidates of tr(ΔW H ΔWᵀ) per Linear
            per_layer["AWQ forward"] = per_layer["calibration forward"] + per_layer["Hessians"]
            per_layer["AWQ search"] = 2 * AWQ_CANDIDATES * sum(r * c * c for r, c in shape.linears)
            if not run.gptq:  # round-to-nearest needs no Hessians; the output pass is the forward's cost
                del per_layer["Hessians"]
    if run.mse:
        per_layer["MSE observer (element ops)"] = MSE_EVALS * 12 * shape.layer_linear_params
    return {k: v * shape.layers for k, v in per_layer.items()}


def plan_compress(cfg: dict, run: CompressRun, machine: Machine) -> Estimate:
    shape = Shape.from_config(cfg)
    phases = _compress_phases(shape, run)
    notes = []
    on_gpu = machine.device == "cuda"
    peak_device = None
    if on_gpu:  # the layer, activations and Hessians live on the GPU; the host keeps reads and the dataset
        host_only = ("base", "calibration rows")
        device_phases = {k: {t: b for t, b in v.items() if t not in host_only} for k, v in phases.items()}
        peak_device = int(max(sum(v.values()) for v in device_phases.values()) * SLACK) + GiB  # + CUDA context
        phases = {"host": {"base": BASE_RSS, "calibration rows": SHAREGPT_RSS if run.sharegpt else 0,
                           "largest tensor read": shape.embed_params * run.source_bytes}}
    name, terms = max(phases.items(), key=lambda kv: sum(kv[1].values()))
    peak = int(sum(terms.values()) * SLACK)
    flops = compress_flops(shape, run, on_gpu)
    # bf16 work (the calibration forward in bf16, its bf16 Hessian products) at the bf16 rate, the
    # float32 linear algebra at the float32 one: 5x apart on an AMX Xeon (1729 vs 328 GFLOP/s, 2 cores)
    f32 = machine.fp32_rate * GEMM_EFFICIENCY or float("inf")  # 0: not measured (the up-front check)
    calib = (machine.gemm_flops if run.calib_bytes == 2 else machine.fp32_rate) * GEMM_EFFICIENCY or float("inf")
    on_calib = {"calibration forward", "Hessians", "AWQ forward", "float reference"}
    times = {k: v / (calib if k in on_calib else f32 / 8 if "element" in k else f32) for k, v in flops.items()}
    if run.gptq:
        cols = sum(c for _, c in shape.linears) * shape.layers
        times["GPTQ column loop"] = cols * (COLUMN_S if not on_gpu else 150e-6)  # per column per Linear
    if (run.gptq or run.awq) and run.sharegpt:
        times["calibration data"] = SHAREGPT_S
    src = (shape.layer_linear_params * shape.layers + shape.embed_params * (1 if shape.tied else 2)) * run.source_bytes
    disk = output_bytes(shape, run)
    times["read + write"] = (src + disk) / 140e6  # measured: FP8_DYNAMIC (read, round, write) ran at ~140 MB/s here
    if on_gpu:
        notes.append("GPU time assumes the named GPU's dense bf16 peak at the same efficiency: a rough figure")
    return Estimate(f"compress {run.scheme}", peak, name, tuple((k, int(v)) for k, v in terms.items()), disk,
                    sum(times.values()), tuple(times.items()), peak_device, tuple(notes))


# -- engine -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineRun:
    weight_bytes: int  # the checkpoint's tensors as the engine keeps them (quantized stay compressed)
    largest_tensor: int  # bytes of the largest stored tensor (reported; loading measured no transient copy)
    kv_cache_bytes: int
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 32
    dtype_bytes: int = 4  # engine compute dtype


def plan_engine(cfg: dict, run: EngineRun, machine: Machine) -> Estimate:
    """Resident memory of LLM(...) / serve, an upper bound: weights at their kept size, the whole KV
    cache budget and a step's activations and logits. Measured on a 2-layer 8B-shape synth (bf16,
    3.0 GB, KV 256 MB): 2.50 GB resident after a generate against 3.87 GB planned, because the
    embedding's rows and the KV cache's pages only become resident as tokens use them (the 1.05 GB
    embedding and the KV budget make up the difference); loading adds no measurable transient."""
    shape = Shape.from_config(cfg)
    t, b = run.max_num_batched_tokens, run.dtype_bytes
    acts = t * (4 * shape.hidden + shape.qkv_out + 3 * shape.intermediate) * b + run.max_num_seqs * shape.vocab * 4
    terms = {"base": BASE_RSS, "weights": run.weight_bytes, "KV cache": run.kv_cache_bytes,
             "step activations + logits": acts}
    parts = tuple((k, int(v)) for k, v in terms.items())
    return Estimate("engine", int(sum(terms.values())), "serving", parts, 0, None)


# -- facts of this machine and of a checkpoint ------------------------------------------------

def measure_gemm_flops(seconds: float = 0.2) -> tuple[float, float]:
    """Matmul FLOP/s of this CPU, (float32, bf16), ~0.2 s."""
    import torch

    rates = []
    n = 1024
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n).to(dt)
        a @ a
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 2:
            a @ a
            reps += 1
        rates.append(2 * n**3 * reps / (time.perf_counter() - t0))
    return rates[0], rates[1]


def this_machine(output: str | os.PathLike | None = None, gpu: str | None = None, measure: bool = True) -> Machine:
    """RAM available now, free disk where `output` goes, and (measure=True) the GEMM rate; with
    `gpu` a named GPU's memory and peak, or "cuda" for the visible one."""
    import psutil

    disk = None
    if output is not None:
        p = Path(output).expanduser().resolve()
        parent = next(q for q in [p, *p.parents] if q.exists())
        disk = shutil.disk_usage(parent).free
    avail = psutil.virtual_memory().available
    if gpu:
        if gpu.upper() not in GPUS:
            raise PlanError(f"--gpu {gpu!r}: known GPUs are {', '.join(GPUS)}")
        mem, flops = GPUS[gpu.upper()]
        return Machine(gpu.upper(), avail, disk, os.cpu_count() or 1, flops, "cuda", mem)
    f32, bf16 = measure_gemm_flops() if measure else (0.0, 0.0)
    return Machine("this CPU", avail, disk, os.cpu_count() or 1, max(f32, bf16), fp32_flops=f32)


def checkpoint_facts(folder: str | os.PathLike) -> tuple[dict, int, int, int]:
    """(config, stored bytes, largest tensor bytes, element size of the dominant float dtype), from
    config.json and the safetensors headers only (no tensor is read)."""
    import struct

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    total = largest = 0
    by_dtype: dict[str, int] = {}
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k == "__metadata__":
                continue
            size = v["data_offsets"][1] - v["data_offsets"][0]
            total += size
            largest = max(largest, size)
            by_dtype[v["dtype"]] = by_dtype.get(v["dtype"], 0) + size
    dominant = max(by_dtype, key=by_dtype.get) if by_dtype else "BF16"
    return cfg, total, largest, {"F32": 4, "F16": 2, "BF16": 2}.get(dominant, 2)


def model_facts(model: str) -> tuple[dict, int, int, int]:
    """checkpoint_facts for a folder or 'default'; for a config alone (a synth built-in name or a
    config.json), the bf16 checkpoint it describes."""
    from .models import ModelError, resolve_model
    from .synth.config import SynthError, builtin_names, check_config, load_config

    if model not in builtin_names() and not str(model).endswith(".json"):
        try:
            return checkpoint_facts(resolve_model(model))
        except ModelError:
            if os.environ.get("HF_HUB_OFFLINE") != "1":
                raise
    try:
        cfg, source = load_config(model)
    except SynthError as e:
        raise PlanError(f"model {model!r}: not a model folder, and as a config: {e}") from None
    check_config(cfg, source)
    sb = {"float32": 4}.get(cfg.get("torch_dtype") or cfg.get("dtype"), 2)
    shape = Shape.from_config(cfg)
    total = (shape.layer_linear_params * shape.layers + shape.embed_params * (1 if shape.tied else 2)) * sb
    return cfg, total, shape.embed_params * sb, sb


def compress_run(recipe, source_bytes: int, calib_bytes: int) -> CompressRun:
    """CompressRun from a compress.Recipe (duck-typed: plan sits below the stages)."""
    scheme = recipe.quant_scheme
    act = scheme.input_activations
    return CompressRun(
        scheme=scheme.name, group_size=scheme.weights.group_size, num_samples=recipe.num_samples,
        max_seq_len=recipe.max_seq_len, calib_bytes=calib_bytes, source_bytes=source_bytes, gptq=scheme.uses_gptq,
        awq=bool(getattr(recipe, "uses_awq", False)),
        smooth=act is not None and act.type == "int" and recipe.smoothing_strength > 0,
        smooth_mlp=act is not None and act.type == "int" and getattr(recipe, "mlp_smoothing_strength", 0) != 0,
        float_target=bool(getattr(recipe, "float_target", False)) and scheme.uses_gptq,
        sharegpt=recipe.dataset == "sharegpt", mse=scheme.weights.observer == "mse")


COMPRESS_FIX = "lower --num-samples or --max-seq-len, or run on a GPU (--device cuda)"
ENGINE_FIX = ("lower kv_cache_memory_bytes (--kv-cache-memory-bytes) or max_num_batched_tokens, "
              "or load a quantized checkpoint (llmpress compress)")


def check_compress(folder: Path, recipe, device: str, calib_bytes: int, output) -> Estimate | None:
    """compress()'s up-front check: raises PlanError when the run cannot fit here."""
    if os.environ.get(SKIP_ENV) == "1":
        return None
    cfg, _, _, source_bytes = checkpoint_facts(folder)
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        machine = Machine(props.name, this_machine(output, measure=False).ram_available, None, os.cpu_count() or 1,
                          0.0, "cuda", props.total_memory)
    else:
        machine = this_machine(output, measure=False)
    est = plan_compress(cfg, compress_run(recipe, source_bytes, calib_bytes), machine)
    check(est, machine, COMPRESS_FIX)
    return est


def check_engine(folder: Path, kv_cache_bytes: int | None, max_num_batched_tokens: int, max_num_seqs: int,
                 dtype_bytes: int, keeps_bf16: bool) -> Estimate | None:
    """LLMEngine's up-front check. `keeps_bf16`: the loader keeps bf16 matrices as stored (kernels
    present); otherwise a dense checkpoint is widened to the engine dtype. kv_cache_bytes None: the
    engine's default, min(2 GiB, a quarter of the RAM left after loading)."""
    if os.environ.get(SKIP_ENV) == "1":
        return None
    cfg, stored, largest, source_bytes = checkpoint_facts(folder)
    weights = stored
    if not cfg.get("quantization_config") and not (keeps_bf16 and source_bytes == 2) and dtype_bytes != source_bytes:
        weights = stored * dtype_bytes // source_bytes
    machine = this_machine(None, measure=False)
    if kv_cache_bytes is None:
        kv_cache_bytes = min(2 * GiB, max(0, machine.ram_available - weights) // 4)
    est = plan_engine(cfg, EngineRun(weights, largest, kv_cache_bytes, max_num_batched_tokens, max_num_seqs,
                                     dtype_bytes), machine)
    check(est, machine, ENGINE_FIX)
    return est


def check(estimate: Estimate, machine: Machine, fix: str) -> None:
    """Raise PlanError when the estimate does not fit the machine (unless LLMPRESS_SKIP_PLAN=1)."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in estimate.terms if v)
    hatch = f"(to run anyway: {SKIP_ENV}=1)"
    # The base part is this process, already resident: only the rest must still be free.
    need = estimate.peak_ram - (BASE_RSS if estimate.peak_device is None else 0)
    if need > machine.ram_available:
        raise PlanError(
            f"{estimate.what} needs ~{estimate.peak_ram / 1e9:.1f} GB of RAM at its peak ({estimate.peak_phase}: "
            f"{parts} GB) but {machine.ram_available / 1e9:.1f} GB is available; {fix} {hatch}")
    if estimate.peak_device is not None and machine.device_memory and estimate.peak_device > machine.device_memory:
        raise PlanError(
            f"{estimate.what} needs ~{estimate.peak_device / 1e9:.1f} GB of GPU memory but {machine.name} has "
            f"{machine.device_memory / 1e9:.1f} GB; {fix} {hatch}")
    if machine.disk_free is not None and estimate.disk > machine.disk_free:
        raise PlanError(f"{estimate.what} writes ~{estimate.disk / 1e9:.1f} GB but {machine.disk_free / 1e9:.1f} GB "
                        f"is free there; free space or pick another --output {hatch}")


def report(model: str, output: str, gpu: str | None, recipe=None,
           engine: tuple[int | None, int, int] | None = None) -> list[str]:
    """`llmpress plan`'s lines: a compress of `recipe`, or with `engine` = (kv_cache_memory_bytes or None,
    max_num_batched_tokens, max_num_seqs) an engine run, of `model` on this machine (or `gpu`); then the JSON."""
    cfg, stored, largest, source_bytes = model_facts(model)
    machine = this_machine(output, gpu)
    where = (f"{machine.name} ({machine.device_memory / 2**30:.0f} GiB)" if gpu else
             f"this CPU ({machine.cores} cores, {machine.fp32_rate / 1e9:.0f} GFLOP/s float32, "
             f"{machine.gemm_flops / 1e9:.0f} best measured)")
    if engine is not None:
        kv_bytes, max_num_batched_tokens, max_num_seqs = engine
        weights = stored if cfg.get("quantization_config") or source_bytes == 2 else stored * 4 // source_bytes
        kv = kv_bytes or min(2 << 30, max(0, machine.ram_available - weights) // 4)
        est = plan_engine(cfg, EngineRun(weights, largest, kv, max_num_batched_tokens, max_num_seqs), machine)
        head = f"engine (LLM / serve), KV cache {kv / 1e9:.2f} GB, {max_num_seqs} seqs"
        fix = ENGINE_FIX
    else:
        from .compress.calibrate import fastest_cpu_dtype

        cb = {"float32": 4, "bfloat16": 2}.get(recipe.dtype) or (2 if gpu or fastest_cpu_dtype().itemsize == 2 else 4)
        run = compress_run(recipe, source_bytes, cb)
        est = plan_compress(cfg, run, machine)
        head = (f"compress {run.scheme}" + (f" (group {run.group_size})" if run.scheme.startswith("W4") else "")
                + f", {run.num_samples} samples x {run.max_seq_len} tokens"
                + f", calibration in {'bfloat16' if cb == 2 else 'float32'}")
        fix = COMPRESS_FIX
    return [f"{head}, on {where}; model {model}: {stored / 1e9:.2f} GB stored",
            *describe(est, machine, fix, with_disk=engine is None),
            json.dumps({**est.to_dict(), "ram_available_gb": round(machine.ram_available / 1e9, 2)})]


def describe(est: Estimate, machine: Machine, fix: str, with_disk: bool = True) -> list[str]:
    """`llmpress plan`'s lines: peak RAM and its terms, GPU memory, disk and wall time, and the verdict."""
    parts = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in est.terms if v)
    lines = [f"  peak RAM    {est.peak_ram / 1e9:6.2f} GB  at {est.peak_phase}: {parts} GB"]
    if est.peak_device is not None:
        lines.append(f"  GPU memory  {est.peak_device / 1e9:6.2f} GB  of {machine.device_memory / 1e9:.0f} GB")
    if with_disk:
        steps = ", ".join(f"{k} {v / 60:.1f}" for k, v in est.time_terms)
        lines += [f"  disk        {est.disk / 1e9:6.2f} GB  written", f"  wall time   {est.wall_s / 60:6.1f} min ({steps} min)"]
    try:
        check(est, machine, fix)
        lines.append(f"  fits: {machine.ram_available / 1e9:.1f} GB of RAM available")
    except PlanError as e:
        lines.append(f"  does not fit: {e}")
    return lines
