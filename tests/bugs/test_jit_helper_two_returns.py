"""Regression: a jit helper that returned tiles of two shapes from its two branches compiled only where
the shapes agreed (pass B's 32 x 128 tile), which the interpreter never shows. The checks compile for
sm_90 with Triton's compiler on this machine, in a subprocess without TRITON_INTERPRET (the suite's
kernels are interpreted functions)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import triton

RECORD = "docs/bugs/jit-helper-two-returns.md"
pytestmark = pytest.mark.skipif(
    tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9),
    reason="compile_check's use of triton.compile is verified on Triton 3.9",
)


ROOT = pathlib.Path(__file__).resolve().parents[2]


def _compile(script: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    """Run script from a file (triton.jit reads its functions' source) in the repository's root."""
    path = tmp_path / "compile_for_sm90.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


MUTANT_AND_FIX = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

@triton.jit
def two_returns(p, TRANSPOSED: tl.constexpr):
    if TRANSPOSED:
        return tl.load(p + tl.arange(0, 32)[:, None] * 64 + tl.arange(0, 64)[None, :])
    return tl.load(p + tl.arange(0, 64)[:, None] * 32 + tl.arange(0, 32)[None, :])

@triton.jit
def one_return(p, TRANSPOSED: tl.constexpr):
    if TRANSPOSED:
        t = tl.load(p + tl.arange(0, 32)[:, None] * 64 + tl.arange(0, 64)[None, :])
    else:
        t = tl.load(p + tl.arange(0, 64)[:, None] * 32 + tl.arange(0, 32)[None, :])
    return t

@triton.jit
def kernel_old(p, q):
    t = two_returns(p, True)
    tl.store(q + tl.arange(0, 32)[:, None] * 64 + tl.arange(0, 64)[None, :], t)

@triton.jit
def kernel_new(p, q):
    t = one_return(p, True)
    tl.store(q + tl.arange(0, 32)[:, None] * 64 + tl.arange(0, 64)[None, :], t)

for k in (kernel_old, kernel_new):
    try:
        triton.compile(ASTSource(k, {"p": "*bf16", "q": "*bf16"}, {}), target=GPUTarget("cuda", 90, 32))
        print(k.fn.__name__, "compiled")
    except Exception as e:
        while e.__cause__ is not None:
            e = e.__cause__
        print(k.fn.__name__, "failed:", str(e).splitlines()[-1])
"""


def test_two_returns_of_two_shapes_do_not_compile(tmp_path):
    out = _compile(MUTANT_AND_FIX, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("kernel_old failed:") and "Return type mismatch" in lines[0], out.stdout
    assert lines[1] == "kernel_new compiled", out.stdout


PASS_B = """
import torch
from benchmarks import compile_check
from mhc_ops.golden import Case
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.kernels import fused_bwd

t = make_inputs(Case(lead=(70,), n=4, D=49, dtype="bfloat16", seed=1), "cpu")
c = torch.rand(70, 4)
args = [t["x"], t["phi"], t["alpha"], t["x"][..., 0, :], c, torch.rand(70, 4, 4), torch.rand(70),
        torch.randn(70, 24), c, c, t["gamma"], t["x"], 1e-6]
with compile_check.recording() as records:
    for tile in ((32, 128), (64, 64)):
        fused_bwd.launch_backward_fused(*args, block_t=tile[0], block_d=tile[1], presplit=True)
items = [(*compile_check.spec(*r), "cuda", 90, False, False, False) for r in records if r[0].fn.__name__ == "_pass_b_kernel"]
for desc, error in map(compile_check.compile_one, items):
    print("FAILED" if error else "ok", desc, error or "")
"""


def test_pass_b_compiles_on_both_tiles(tmp_path):
    out = _compile(PASS_B, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ok _pass_b_kernel") for line in lines), out.stdout
    assert "BLOCK_T=32, BLOCK_D=128" in lines[0] and "BLOCK_T=64, BLOCK_D=64" in lines[1], out.stdout
