"""Regression: sinkhorn's eps check called math.isinf, which torch.compile(fullgraph=True) cannot trace."""

import math

import pytest
import torch

import mhc_ops

RECORD = "docs/bugs/sinkhorn-validation-under-compile.md"


def old_eps_check(eps) -> None:
    """Mutant of kernels/sinkhorn.py::check_sinkhorn_iters's eps check, as it was."""
    if not eps >= 0 or math.isinf(eps):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps}")


def test_sinkhorn_compiles_fullgraph():
    fn = torch.compile(lambda L, eps: mhc_ops.sinkhorn(L, 20, eps, backend="golden"), fullgraph=True, dynamic=True,
                       backend="eager")  # fmt: skip
    L = torch.randn(5, 4, 4)
    assert torch.allclose(fn(L, 1e-6), mhc_ops.sinkhorn(L, backend="golden"))


def test_check_catches_math_isinf():
    def traced(L, eps):
        old_eps_check(eps)
        return L * 2

    fn = torch.compile(traced, fullgraph=True, dynamic=True, backend="eager")
    with pytest.raises(torch._dynamo.exc.Unsupported, match="isinf"):
        fn(torch.randn(3), 1e-6)
