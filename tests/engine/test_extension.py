"""The C++ extension's build and probes (engine/extension.py): modes, vector widths, and builds
that fail or were killed half-way."""
from __future__ import annotations

import pytest

from llmpress.engine import extension

FAST = extension.available()  # False under LLMPRESS_KERNELS=reference


def test_vector_width_is_checked():
    with pytest.raises(ValueError, match="vector width 128 is not available"):
        extension.set_vector_bits(128)


def test_modes():
    """available() follows LLMPRESS_KERNELS; build() reports the extension itself."""
    import os

    assert extension.available() == (extension.build() and os.environ.get("LLMPRESS_KERNELS", "").lower() != "reference")


def test_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    """A toolchain that cannot build the extension costs speed, never a crash."""
    broken = tmp_path / "qgemm.cpp"
    broken.write_text("#error this toolchain cannot build the kernels\n")
    monkeypatch.setattr(extension, "_SOURCES", [broken])
    monkeypatch.setenv("LLMPRESS_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="reference path"):
        assert extension.load.__wrapped__() is None


@pytest.mark.skipif(not FAST, reason="needs the toolchain that built the kernels")
def test_interrupted_build_is_rebuilt_not_waited_on(tmp_path):
    """A build killed mid-way (SIGKILL, the OOM killer) leaves torch's lock file behind, which
    made every later process wait on it forever. The next process must build and publish."""
    import subprocess
    import sys
    from pathlib import Path

    # this code's build folder name (a process that built the extension itself loaded it from its
    # private folder, "<tag>.building-<random>", before renaming it into place)
    tag = Path(extension.load().__file__).parent.name.split(".building-")[0]
    stale = tmp_path / "torch_extensions" / tag
    stale.mkdir(parents=True)
    (stale / "lock").touch()
    code = "from llmpress.engine import extension; import sys; sys.exit(0 if extension.build() else 1)"
    env = {**__import__("os").environ, "LLMPRESS_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    assert (stale / "llmpress_qgemm.so").is_file() and not (stale / "lock").exists()
    assert [p.name for p in stale.parent.iterdir()] == [tag]  # no private build folder left behind


def _pybind_params(fn) -> list[tuple[str, str]]:
    """(name, type) of each argument from pybind's signature line, "name(x: torch.Tensor, eps: float) -> ...".
    pybind 3 spells a C++ double "typing.SupportsFloat | typing.SupportsIndex" and an int64_t
    "typing.SupportsInt | typing.SupportsIndex": read as float and int."""
    import re

    first = fn.__doc__.splitlines()[0]
    args = re.fullmatch(rf"{fn.__name__}\((.*)\) -> .*", first).group(1)
    out = []
    for a in args.split(", "):
        name, kind = a.split(": ", 1)
        kind = "float" if "SupportsFloat" in kind else "int" if "SupportsInt" in kind else kind
        out.append((name, kind))
    return out


@pytest.mark.skipif(extension.load() is None, reason="needs the built extension")
def test_layer_ops_offer_ops_py_names_and_signatures():
    """On decode steps Layer.forward calls the extension's ops where it otherwise calls ops.py's
    (`o = ops if ext is None else ext`): every op it reaches through `o` must exist in both with the
    same arguments, in the same order, of the same types."""
    import inspect
    import re

    from llmpress.engine import model, ops

    called = sorted(set(re.findall(r"\bo\.(\w+)", inspect.getsource(model.Layer.forward))))
    assert {"rms_norm", "add_rms_norm_", "rope_qkv_cache_", "decode_attention", "silu_mul"} <= set(called)
    ext = extension.load()
    for name in called:
        ours = [(p.name, p.annotation) for p in inspect.signature(getattr(ops, name)).parameters.values()]
        assert _pybind_params(getattr(ext, name)) == ours, name
