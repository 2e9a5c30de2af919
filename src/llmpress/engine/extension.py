"""The C++ extension behind the engine's kernels (csrc/; its Python module is csrc/bindings.cpp):
compiled once per CPU and code version, loaded, and probed (available / amx_available / vector width).
`load()` is the one way to the module; linear.py's weights, ops.py and Model's decode steps call it.

The extension is compiled on first use (or by `build()`) with torch.utils.cpp_extension into
~/.cache/llmpress/torch_extensions/<torch, python, CPU flags, code hash>/ ($LLMPRESS_CACHE
overrides the root), built in a private folder and renamed into place when complete. If the CPU lacks
AVX2/FMA/F16C or the build fails, we warn once and callers use the reference path.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = [_CSRC / f for f in ("qgemm.cpp", "int4_vnni.cpp", "amx_gemm.cpp", "amx_w8a8.cpp", "layer_ops.cpp",
                                 "bindings.cpp")]  # + headers beside them
# -ffp-contract=off: GCC would fuse a written multiply and add (intrinsics included) into an FMA,
# and the rotary kernel must round like torch's two products and a subtraction.
_CFLAGS = ["-O3", "-march=native", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off"]


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def load():
    """The compiled module (built on the first call, then cached), or None (warned once) when this CPU or
    toolchain cannot have it. The one way in: linear.py's weights, ops.py and the model's decode step call it."""
    flags = _cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma", "f16c"} <= flags:
        warnings.warn("llmpress kernels: this CPU lacks AVX2/FMA/F16C; using the slow reference path", stacklevel=3)
        return None
    from torch.utils.cpp_extension import load as compile_extension

    from ..models import cache_dir

    # -march=native code is only valid on this CPU model, so the build folder is keyed by it too.
    cpu = hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:8]
    # torch rebuilds when a source changes, not a header: key the folder by every file's content.
    files = sorted({*_SOURCES, *_SOURCES[0].parent.glob("*.h")})
    code = hashlib.sha1(b"".join(f.read_bytes() for f in files) + " ".join(_CFLAGS).encode()).hexdigest()[:8]
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info.major}{sys.version_info.minor}-{cpu}-{code}"
    build_dir = cache_dir() / "torch_extensions" / tag
    library = build_dir / "llmpress_qgemm.so"
    try:
        if library.is_file():  # published whole by an earlier build (below): import it as it is
            return _import_library(library)
        # Build in a folder of our own and publish it with one rename. torch's own lock file
        # would outlive a build that was killed (SIGKILL, the OOM killer) and make every later
        # process wait on it forever; a half-built folder here is just never published.
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{tag}.building-", dir=build_dir.parent))
        # torch finds ninja on PATH; a venv's own ninja is beside its interpreter even when the
        # venv is not activated (.venv/bin/python run directly).
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        try:
            module = compile_extension(
                name="llmpress_qgemm",
                sources=[str(f) for f in _SOURCES],
                extra_cflags=_CFLAGS,
                extra_ldflags=["-fopenmp"],  # at::parallel_for is OpenMP, inlined into our code
                build_directory=str(tmp),
                verbose=False,
            )
            if build_dir.is_dir() and not library.is_file():  # a folder left by an older, interrupted build
                shutil.rmtree(build_dir, ignore_errors=True)
            try:
                os.rename(tmp, build_dir)
            except OSError:  # another process published first: ours is loaded already, drop its files
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return module
    except Exception as e:  # no compiler, no ninja, compile error: run, slowly, rather than crash
        warnings.warn(f"llmpress kernels: building the C++ extension failed, using the reference path ({e})", stacklevel=3)
        return None


def _import_library(path: Path):
    spec = importlib.util.spec_from_file_location("llmpress_qgemm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build() -> bool:
    """Compile (or load the cached) extension now; True when the fast kernels can run."""
    return load() is not None


def available() -> bool:
    """True when weights built now take the fast path: the extension is built and
    LLMPRESS_KERNELS is not "reference"."""
    return os.environ.get("LLMPRESS_KERNELS", "").lower() != "reference" and load() is not None


def amx_available() -> bool:
    """True when weights built now may use the AMX GEMMs (csrc/amx_gemm.cpp): the extension was
    built for a CPU with AMX-BF16/INT8, Linux granted the tile state, and LLMPRESS_AMX is not "0"."""
    ext = load() if available() else None
    return ext is not None and os.environ.get("LLMPRESS_AMX", "") != "0" and ext.amx_available()


def max_vector_bits() -> int:
    """512 when the extension was built with AVX-512 (this CPU has it), else 256; 0 without it."""
    ext = load()
    return ext.max_vector_bits() if ext is not None else 0


def set_vector_bits(bits: int) -> None:
    """Run the float-decoded GEMMs (int4, int8, fp8, bf16) with 512- or 256-bit tiles; both are
    exact decodes with float32 FMAs, tested against the reference. For tests and benchmarks."""
    ext = load()
    if ext is None or bits not in (256, 512) or bits > ext.max_vector_bits():
        raise ValueError(f"vector width {bits} is not available (this build: {max_vector_bits()} bits at most)")
    ext.set_vector_bits(bits)


def int4_int16_built() -> bool:
    """True when the extension has the int16-activation int4 GEMM (csrc/int4_vnni.cpp: AVX512-VNNI CPUs)."""
    ext = load()
    return ext is not None and ext.int4_int16_built()


def set_int4_act_bits(bits: int) -> None:
    """The int4 decode GEMM's activations: 16 (each row rounded to int16 per weight group, ~-90 dB, then
    VPDPWSSD; the default where built, ~1.3-1.7x faster on Zen 4) or 32 (float32 FMAs, exact decode).
    Both are tested against the reference. For tests and benchmarks."""
    ext = load()
    if ext is None or bits not in (16, 32) or (bits == 16 and not ext.int4_int16_built()):
        raise ValueError(f"int4 activations of {bits} bits are not available (int16 built: {int4_int16_built()})")
    ext.set_int4_act_bits(bits)


def int4_act_bits() -> int:
    """16 or 32: the int4 decode GEMM's activations now (0 without the extension)."""
    ext = load()
    return ext.int4_act_bits() if ext is not None else 0
