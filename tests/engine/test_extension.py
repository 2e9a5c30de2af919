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
        assert extension._extension.__wrapped__() is None


@pytest.mark.skipif(not FAST, reason="needs the toolchain that built the kernels")
def test_interrupted_build_is_rebuilt_not_waited_on(tmp_path):
    """A build killed mid-way (SIGKILL, the OOM killer) leaves torch's lock file behind, which
    made every later process wait on it forever. The next process must build and publish."""
    import subprocess
    import sys
    from pathlib import Path

    # this code's build folder name (a process that built the extension itself loaded it from its
    # private folder, "<tag>.building-<random>", before renaming it into place)
    tag = Path(extension._extension().__file__).parent.name.split(".building-")[0]
    stale = tmp_path / "torch_extensions" / tag
    stale.mkdir(parents=True)
    (stale / "lock").touch()
    code = "from llmpress.engine import extension; import sys; sys.exit(0 if extension.build() else 1)"
    env = {**__import__("os").environ, "LLMPRESS_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    assert (stale / "llmpress_qgemm.so").is_file() and not (stale / "lock").exists()
    assert [p.name for p in stale.parent.iterdir()] == [tag]  # no private build folder left behind
