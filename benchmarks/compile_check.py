"""Every Triton kernel of the library compiled for a GPU target on this machine: no GPU needed.

    python -m benchmarks.compile_check [--target cuda:90] [--jobs N]

What it catches: what Triton's compiler refuses and its interpreter runs (the interpreter executes a
kernel as Python), such as a jit helper returning tiles of two shapes from its two branches, which only
a GPU run showed before (docs/perf.md, Performance IX). How: each registered stage's Triton launcher,
and the tile choices the launchers make on a GPU (VARIANTS), run on small CPU tensors with every launch
recorded instead of run; each distinct kernel specialisation (argument types, constexprs, launch
options) is then compiled by triton.compile for the target (default cuda:90, the H200's). Not caught:
what needs a GPU to run (numbers, races), or Triton's specialisation on argument values (pointer and
int divisibility; every int is compiled as i32/i64), so the registers and spills of these compiles are not
a GPU's. Refuses TRITON_INTERPRET=1. One line per specialisation; exit 1 if any fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator

import torch

DTYPES = {
    torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.float64: "*fp64",
    torch.int32: "*i32", torch.int64: "*i64", torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1",
}  # fmt: skip
OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")  # launch options, not kernel arguments
SMS = 132  # an H200's SMs: the launchers' heuristics pick the GPU's tiles
# (n, x dtype) of the stages' workloads and of VARIANTS': each distinct O_PAD and N_PAD, each dtype path.
STAGE_CASES = ((1, "float32"), (3, "float16"), (4, "bfloat16"), (4, "float32"), (6, "float16"), (8, "bfloat16"))
VARIANT_CASES = ((4, "bfloat16"), (4, "float32"), (6, "bfloat16"), (8, "bfloat16"), (1, "float16"))


def spec(jit, args: tuple, kwargs: dict) -> tuple[str, dict, dict, dict]:
    """("module:kernel", signature, constexprs, options) of one recorded launch."""
    sig, constexprs = {}, {}
    for i, p in enumerate(jit.params):
        value = args[i] if i < len(args) else kwargs.get(p.name, p.default)
        if p.is_constexpr or value is None:
            sig[p.name], constexprs[p.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            sig[p.name] = DTYPES[value.dtype]
        elif isinstance(value, bool):
            sig[p.name] = "i1"
        elif isinstance(value, int):
            sig[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{jit.fn.__name__}: argument {p.name} of type {type(value).__name__}")
    options = {k: kwargs[k] for k in OPTIONS if kwargs.get(k) is not None}
    return f"{jit.fn.__module__}:{jit.fn.__name__}", sig, constexprs, options


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Every launch through kernels._launch.LaunchedKernel recorded as (jit, args, kwargs), none run;
    sm_count answers SMS for CPU tensors (the GPU's tile choices), and the stages take CPU tensors
    without the interpreter (nothing runs)."""
    from mhc_ops import stages
    from mhc_ops.kernels import _launch

    records: list = []

    def getitem(self, grid):
        return lambda *args, **kwargs: records.append((self.jit, args, kwargs))

    patched = [(_launch.LaunchedKernel, "__getitem__", getitem), (stages, "require_kernel_device", lambda *a: None)]
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("mhc_ops.kernels") and hasattr(module, "sm_count"):
            patched.append((module, "sm_count", lambda device: SMS))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]
    try:
        for obj, name, value in patched:
            setattr(obj, name, value)
        yield records
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def workloads() -> list[tuple[str, Callable[[], object]]]:
    """(label, call): each registered stage on Triton for several n and dtypes, then the launch options
    a GPU picks that the CPU's choices do not reach (VARIANTS)."""
    from mhc_ops.golden import Case, build
    from mhc_ops.golden.registry import COMPOSITES, OP_STAGES
    from mhc_ops.stages import STAGES

    calls = []
    for op in OP_STAGES:
        for n, dtype in STAGE_CASES:
            bundle = build(Case(lead=(70,), n=n, D=49, dtype=dtype, seed=n, op=op), "cpu")
            stages = [*bundle.stages(), *(c for c, parts in COMPOSITES.items() if parts[0] in bundle.stages())]
            for stage in stages:
                inputs = bundle.stage_inputs(stage)
                calls.append((f"{stage} n={n} {dtype}", lambda s=stage, i=inputs: STAGES[s].run("triton", **i)))
    return calls + variants()


def variants() -> list[tuple[str, Callable[[], object]]]:
    """The GPU's own choices: the forward's split and single paths, delayed or not; the fused backward's
    two pass-B tiles (with and without pass A's parts), delayed or not; the seam and the decode boundary."""
    from mhc_ops.golden import Case
    from mhc_ops.golden.fixtures import make_inputs
    from mhc_ops.kernels import decode, fused_bwd, fwd, seam

    calls = []
    for n, dtype in VARIANT_CASES:
        pre = make_inputs(Case(lead=(70,), n=n, D=49, dtype=dtype, seed=n), "cpu")
        post = make_inputs(Case(lead=(70,), n=n, D=49, dtype=dtype, seed=n, op="mhc_post"), "cpu")
        h_pre_prev = torch.rand(70, n) + 0.5
        f_args = [pre[k] for k in ("x", "phi", "alpha", "bias", "gamma")]
        for splits in (1, 2):
            for delayed, hpp in ((False, None), (True, None), (True, h_pre_prev)):
                calls.append((f"fwd n={n} {dtype} splits={splits} delayed={delayed}", lambda s=splits, d=delayed,
                              h=hpp, a=f_args: fwd.launch_fwd(*a, 1e-6, 1e-6, splits=s, delayed=d, h_pre_prev=h)))  # fmt: skip
        coeff = torch.rand(70, n)  # the saved tensors and upstream gradients: shapes and dtypes only
        b_args = [pre["x"], pre["phi"], pre["alpha"], pre["x"][..., 0, :], coeff, torch.rand(70, n, n),
                  torch.rand(70), torch.randn(70, n * n + 2 * n), coeff, coeff, pre["gamma"], pre["x"], 1e-6]  # fmt: skip
        for tile in ((32, 128), (64, 64)):
            for presplit in (True, False):
                for delayed, hpp in ((False, None), (True, h_pre_prev)):
                    calls.append((f"bwd n={n} {dtype} tile={tile} presplit={presplit} delayed={delayed}",
                                  lambda t=tile, p=presplit, d=delayed, h=hpp, a=b_args: fused_bwd.launch_backward_fused(
                                      *a, block_t=t[0], block_d=t[1], presplit=p, delayed=d, h_pre_prev=h,
                                      dh_pre=torch.randn(70, a[0].shape[-2]) if d else None)))  # fmt: skip
        p_args = [post[k] for k in ("x", "h_res", "h_out", "h_post")]
        calls.append((f"seam n={n} {dtype}", lambda p=p_args, a=f_args, h=h_pre_prev: seam.launch_seam_fwd(
            *p, h, *a[1:], 1e-6, 1e-6)))  # fmt: skip
        if n <= decode.MAX_N:
            for hpp in (None, h_pre_prev):
                calls.append((f"decode n={n} {dtype} delayed={hpp is not None}", lambda p=p_args, a=f_args,
                              h=hpp: decode.launch_decode(*p, h, *a[1:], 1e-6, 1e-6, 20, 1e-6)))  # fmt: skip
    return calls


def compile_one(item: tuple[str, dict, dict, dict, str, int]) -> tuple[str, str | None]:
    """Compile one specialisation -> (its description, None or the compiler's last error line)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, sig, constexprs, options, backend, arch = item
    module, _, kernel = name.partition(":")
    jit = getattr(importlib.import_module(module), kernel).jit
    desc = f"{kernel} " + ", ".join(f"{k}={v}" for k, v in constexprs.items() if k.isupper()) + f" {options}"
    try:
        triton.compile(ASTSource(jit, sig, constexprs), target=GPUTarget(backend, arch, 32), options=options)
    except Exception as e:  # noqa: BLE001  (any compiler failure is the finding)
        return desc, _innermost(e)
    return desc, None


def _innermost(e: BaseException) -> str:
    """The root of a chain of compiler errors, in one line: where (Triton's 'at LINE:COL' of each jit
    function on the way) and what."""
    where = []
    while True:
        first = str(e).splitlines()[0] if str(e) else ""
        if first.startswith("at "):
            where.append(first.rstrip(":"))
        if e.__cause__ is None:
            break
        e = e.__cause__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{' > '.join(where)}: {type(e).__name__}: {lines[-1] if lines else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="cuda:90", help="BACKEND:ARCH (default cuda:90, an H100/H200)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once (default: CPUs)")
    args = parser.parse_args(argv)
    backend, _, arch = args.target.partition(":")
    if backend != "cuda" or not arch.isdigit():
        parser.error(f"--target: expected cuda:ARCH such as cuda:90, got {args.target!r}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the interpreter compiles nothing; run without it")
    unique: dict[str, tuple] = {}
    failed = 0
    with recording() as records:
        for label, call in workloads():
            try:
                call()
            except Exception as e:  # noqa: BLE001  (a launcher that raises on valid inputs is a finding too)
                failed += 1
                print(f"FAILED  launching {label}\n    {type(e).__name__}: {e}", flush=True)
    for jit, a, kw in records:
        name, sig, constexprs, options = spec(jit, a, kw)
        key = repr((name, sorted(sig.items()), sorted(constexprs.items(), key=str), sorted(options.items())))
        unique.setdefault(key, (name, sig, constexprs, options, backend, int(arch)))
    print(f"# {len(records)} launches recorded, {len(unique)} kernel specialisations compiled for {args.target}\n")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for desc, error in pool.map(compile_one, unique.values()):
            failed += error is not None
            print(f"{'FAILED' if error else 'ok'}  {desc}" + (f"\n    {error}" if error else ""), flush=True)
    print(f"\n{len(unique)} specialisations, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
