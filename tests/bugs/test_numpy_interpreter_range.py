"""Regression: numpy 2.4 breaks Triton 3.6's interpreter on `range(n)` over a runtime argument; the
library's launches refuse that pair with the fix in the message."""

import warnings

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import mhc_ops
from mhc_ops.kernels import _launch
from tests.helpers import INTERPRETING

RECORD = "docs/bugs/numpy-interpreter-range.md"
pytestmark = pytest.mark.skipif(not INTERPRETING, reason="compiled kernels do not go through numpy")
TRITON_BEFORE_3_7 = tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 7)


@triton.jit
def _triangle_kernel(out_ptr, n):
    """out = 1 + 2 + ... + n, with n a runtime argument (the interpreter hands it in as an array)."""
    total = 0
    for i in range(n):
        total += i + 1
    tl.store(out_ptr, total)


def _triangle(n: int) -> int:
    out = torch.zeros(1, dtype=torch.int32)
    _triangle_kernel[(1,)](out, n)
    return int(out.item())


def test_range_over_a_runtime_argument_runs():
    # The pair the launches refuse (INTERPRETER_NUMPY_CLASH) is exactly the pair this kernel fails on.
    n = int(torch.randint(1, 50, ()))
    if _launch.INTERPRETER_NUMPY_CLASH:
        with pytest.raises(Exception, match="scalar"):
            _triangle(n)
    else:
        assert _triangle(n) == n * (n + 1) // 2, (triton.__version__, np.__version__)


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) >= "2.4.0", reason="numpy 2.4 raises by itself")
def test_check_catches_numpy_rejecting_one_element_arrays():
    # numpy < 2.4 only warns (DeprecationWarning) where 2.4 raises; as an error the warning re-enacts 2.4:
    # Triton 3.6 fails on it (so the first test can see the breakage), Triton 3.7 on does not convert.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        if TRITON_BEFORE_3_7:
            with pytest.raises(Exception, match="scalar"):
                _triangle(7)
        else:
            assert _triangle(7) == 28


def test_launch_refuses_the_clash_naming_the_fix(monkeypatch):
    monkeypatch.setattr(_launch, "INTERPRETER_NUMPY_CLASH", True)
    with pytest.raises(RuntimeError, match=r"numpy .*: install numpy<2\.4 or triton>=3\.7"):
        mhc_ops.sinkhorn(torch.randn(3, 4, 4), backend="triton")
