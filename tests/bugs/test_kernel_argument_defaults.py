"""A kernel parameter with a default: Inductor (torch 2.11) traced the kernel without it and assumed every
input mutated. Kernels with defaults are refused when decorated."""

import importlib
import inspect
import pkgutil

import pytest
import triton.language as tl

from mhc_ops import kernels
from mhc_ops.kernels._launch import LaunchedKernel, launched

RECORD = "docs/bugs/kernel-argument-defaults.md"


def test_a_kernel_with_a_defaulted_parameter_is_refused():
    def _k(x_ptr, N: tl.constexpr, DX: tl.constexpr = True):
        pass

    with pytest.raises(TypeError, match=r"_k: kernel parameters \['DX'\] have defaults"):
        launched(_k)
    with pytest.raises(TypeError, match="DX"):
        launched(do_not_specialize=["x_ptr"])(_k)


def test_no_kernel_of_the_library_has_a_default():
    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        found += [k for k in vars(module).values() if isinstance(k, LaunchedKernel)]
    assert len(found) >= 10
    defaulted = [(k.fn.__name__, name) for k in found for name, p in inspect.signature(k.fn).parameters.items()
                 if p.default is not p.empty]  # fmt: skip
    assert not defaulted
