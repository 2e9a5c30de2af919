"""What the Triton tests share: poisoned allocations and triton 3.6's interpreter made to run on this CPU.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set in tests/conftest.py before
anything imports triton). Both helpers act for one test through pytest's monkeypatch."""
from __future__ import annotations

import types

import torch


def fix_interpreter(monkeypatch) -> None:
    """triton 3.6's interpreter calls int() on 1-element arrays, an error since numpy 2.4: the upstream fix
    (triton-lang/triton#9172, after 3.6.0), for the duration of a test."""
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    monkeypatch.setattr(interp, "_patch_lang_tensor", patched)


def poison(monkeypatch, *modules) -> None:
    """The modules' torch.empty / empty_like return NaN-filled (integers: -77) tensors, so an element a kernel
    fails to write shows up."""
    for module in modules:
        monkeypatch.setattr(module, "torch", _PoisonedTorch())


def _poisoned(make):
    def alloc(*args, **kwargs):
        t = make(*args, **kwargs)
        return t.fill_(float("nan") if t.dtype.is_floating_point else -77)
    return alloc


class _PoisonedTorch(types.SimpleNamespace):
    """torch, as the kernel modules see it in these tests: empty / empty_like come back poisoned."""

    empty = staticmethod(_poisoned(torch.empty))
    empty_like = staticmethod(_poisoned(torch.empty_like))

    def __getattr__(self, name):
        return getattr(torch, name)
