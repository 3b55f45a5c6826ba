"""The accuracy rule of the contract, as data and one function.

An output passes when its norm-wise relative error against the float64 golden, run on the same
(already rounded) inputs, is at most ``FP32_GOLDEN_FACTOR * err(fp32 golden) + ABS_SLACK``.
A NaN never passes. Every test, the diagnose tool and the benchmark use this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP32_GOLDEN_FACTOR = 2.0
ABS_SLACK = 1e-6


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; the absolute norm when ref is all zero (e.g. T = 0)."""
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    o = out.detach().double()
    r = ref.detach().double().to(o.device)
    diff = torch.linalg.vector_norm(o - r).item()
    den = torch.linalg.vector_norm(r).item()
    return diff / den if den > 0 else diff


@dataclass(frozen=True)
class Verdict:
    name: str
    err: float  # of the output under test
    err_fp32: float  # of the fp32 golden on the same inputs
    bound: float

    @property
    def ok(self) -> bool:
        return not math.isnan(self.err) and self.err <= self.bound

    def __str__(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.name:<10} err {self.err:.3e}  bound {self.bound:.3e}  (fp32 golden {self.err_fp32:.3e})"


def judge(name: str, out: torch.Tensor, ref64: torch.Tensor, ref32: torch.Tensor) -> Verdict:
    err32 = rel_err(ref32, ref64)
    return Verdict(name, rel_err(out, ref64), err32, FP32_GOLDEN_FACTOR * err32 + ABS_SLACK)
