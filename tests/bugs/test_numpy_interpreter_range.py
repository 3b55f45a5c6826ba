"""Regression: numpy 2.4 breaks Triton 3.6's interpreter on `range(n)` over a runtime argument;
the CPU pins in noxfile.py keep numpy below 2.4."""

import ast
import pathlib
import warnings

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from tests.helpers import INTERPRETING, KERNEL_DEVICE

RECORD = "docs/bugs/numpy-interpreter-range.md"
needs_kernels = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
NOXFILE = pathlib.Path(__file__).resolve().parents[2] / "noxfile.py"


@triton.jit
def _triangle_kernel(out_ptr, n):
    """out = 1 + 2 + ... + n, with n a runtime argument (the interpreter hands it in as an array)."""
    total = 0
    for i in range(n):
        total += i + 1
    tl.store(out_ptr, total)


def _triangle(n: int) -> int:
    out = torch.zeros(1, dtype=torch.int32, device=KERNEL_DEVICE)
    _triangle_kernel[(1,)](out, n)
    return int(out.item())


@needs_kernels
def test_range_over_a_runtime_argument_runs():
    try:
        got = _triangle(7)
    except Exception as e:  # the interpreter wraps the numpy error in its own exception type
        pytest.fail(
            f"a kernel with range(n) over a runtime argument fails with numpy {np.__version__}: {e!r}. "
            "Triton 3.6's interpreter needs numpy<2.4 (CPU_PINS in noxfile.py)"
        )
    assert got == 28


@pytest.mark.skipif(not INTERPRETING, reason="compiled kernels do not go through numpy")
@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) >= "2.4.0", reason="numpy 2.4 raises by itself")
def test_check_catches_numpy_rejecting_one_element_arrays():
    # numpy < 2.4 only warns (DeprecationWarning) where 2.4 raises; as an error the warning re-enacts 2.4.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(Exception, match="scalar"):
            _triangle(7)


def test_cpu_pins_keep_numpy_below_2_4():
    tree = ast.parse(NOXFILE.read_text())
    pins = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CPU_PINS" for t in node.targets)
    )
    assert "triton==3.6.0" not in pins or "numpy<2.4" in pins, pins
