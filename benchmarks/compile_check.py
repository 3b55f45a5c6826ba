"""Every Triton kernel of the library compiled for a GPU target on this machine: no GPU needed.

    python -m benchmarks.compile_check [--target cuda:90] [--jobs N] [--registers] [--sass] [--loops]
                                       [--only REGEX] [--shapes TxnxD,...]

What it catches: what Triton's compiler refuses and its interpreter runs (the interpreter executes a
kernel as Python), such as a jit helper returning tiles of two shapes from its two branches, which only
a GPU run showed before (docs/perf.md, Performance IX). How: each registered stage's Triton launcher,
and the tile choices the launchers make on a GPU (VARIANTS), run on small CPU tensors with every launch
recorded instead of run; each distinct kernel specialisation (argument types, the values Triton
specialises on, constexprs, launch options) is then compiled by triton.compile for the target (default
cuda:90, the H200's). --registers adds ptxas's registers and spills per kernel: a GPU's at the recorded
argument values (close to, not equal to, an H200 run's: docs/perf.md, Performance X); --sass adds each
kernel's SASS instruction mix (static counts: a GPU-free proxy, docs/perf.md, Performance XIII); --loops each
loop's, one iteration's instructions (the code from a label to the branch back to it); --only REGEX
compiles only the kernels whose name it matches (re.search). --shapes instead compiles what a training
step and a decode step launch by default at those shapes (bf16; the GPU's tile, split and path choices;
uninitialised CPU tensors of the real sizes, nothing runs), each line led by the first shape and op that
launched it: with --registers, the spills of the default path (docs/perf.md, Performance XIV). The compiled code
is the installed Triton's (named in the header; `nox -s compile_check_image` uses the GPU image's). Not caught:
what needs a GPU to run (numbers, races). Refuses TRITON_INTERPRET=1. One line per specialisation; exit 1
if any fails."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import torch

OPTIONS = ("maxnreg", "num_warps", "num_stages", "enable_fp_fusion")  # launch options, not kernel arguments
SMS = 132  # an H200's SMs: the launchers' heuristics pick the GPU's tiles
# (n, x dtype) of the stages' workloads and of VARIANTS': each distinct O_PAD and N_PAD, each dtype path.
STAGE_CASES = ((1, "float32"), (3, "float16"), (4, "bfloat16"), (4, "float32"), (6, "float16"), (8, "bfloat16"))
VARIANT_CASES = ((4, "bfloat16"), (4, "float32"), (6, "bfloat16"), (8, "bfloat16"), (1, "float16"))


def spec(jit, args: tuple, kwargs: dict) -> tuple[str, dict, dict, dict, dict]:
    """("module:kernel", signature, constexprs, attrs, options) of one recorded launch, specialised as
    Triton's launcher specialises it (its own native_specialize_impl): an int equal to 1 becomes a constexpr,
    ints and pointers divisible by 16 get tt.divisibility, except where the kernel's do_not_specialize
    says otherwise. So these compiles are the GPU's at the recorded values (the tiny CPU shapes': a
    realistic D is divisible by 16 where these may not be)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    sig, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(jit.params):
        value = args[i] if i < len(args) else kwargs.get(p.name, p.default)
        if p.is_constexpr or value is None:
            sig[p.name], constexprs[p.name] = "constexpr", value
            continue
        try:
            kind, key = native_specialize_impl(CUDABackend, value, False, not p.do_not_specialize,
                                               not p.do_not_specialize_on_alignment)  # fmt: skip
        except (KeyError, TypeError) as e:  # a dtype or type Triton cannot pass: name the argument
            raise TypeError(f"{jit.fn.__name__}: argument {p.name}: {e}") from e
        sig[p.name] = kind
        if kind == "constexpr":
            constexprs[p.name] = key
        elif key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = {k: kwargs[k] for k in OPTIONS if kwargs.get(k) is not None}
    return f"{jit.fn.__module__}:{jit.fn.__name__}", sig, constexprs, attrs, options


@contextlib.contextmanager
def recording(arguments: bool = True) -> Iterator[list]:
    """Every launch through kernels._launch.LaunchedKernel recorded as (jit, args, kwargs), none run;
    sm_count answers SMS for CPU tensors (the GPU's tile choices), and the stages take CPU tensors
    without the interpreter (nothing runs). arguments=False: (jit, None, None), so no record keeps a
    call's tensors alive (benchmarks/host_profile.py --no-launch: autograd steals a gradient only when
    nothing else holds it)."""
    from mhc_ops import stages
    from mhc_ops.kernels import _launch

    records: list = []

    def getitem(self, grid):
        if not arguments:
            return lambda *args, **kwargs: records.append((self.jit, None, None))
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
    two pass-B tiles (with and without pass A's parts), delayed or not, and pass B under a register cap; the
    seam forward and backward and the decode boundary."""
    from mhc_ops.golden import Case
    from mhc_ops.golden.fixtures import make_inputs
    from mhc_ops.kernels import decode, fused_bwd, fwd, seam, seam_bwd, sinkhorn

    calls = []
    for n, dtype in VARIANT_CASES:
        # D = 64: strides divisible by 16 as a model's are, so these compile as on a GPU (the stages' D = 49
        # covers the unaligned path)
        pre = make_inputs(Case(lead=(70,), n=n, D=64, dtype=dtype, seed=n), "cpu")
        post = make_inputs(Case(lead=(70,), n=n, D=64, dtype=dtype, seed=n, op="mhc_post"), "cpu")
        h_pre_prev = torch.rand(70, n) + 0.5
        f_args = [pre[k] for k in ("x", "phi", "alpha", "bias", "gamma")]
        for splits in (1, 2):
            for delayed, hpp in ((False, None), (True, None), (True, h_pre_prev)):
                calls.append((f"fwd n={n} {dtype} splits={splits} delayed={delayed}", lambda s=splits, d=delayed,
                              h=hpp, a=f_args: fwd.launch_fwd(*a, 1e-6, 1e-6, splits=s, delayed=d, h_pre_prev=h)))  # fmt: skip
                calls.append((f"fwd n={n} {dtype} splits={splits} delayed={delayed} wide", lambda s=splits, d=delayed,
                              h=hpp, a=f_args: fwd.launch_fwd(*a, 1e-6, 1e-6, splits=s, delayed=d, h_pre_prev=h,
                                                              wide=True)))  # fmt: skip
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
        calls.append((f"bwd n={n} {dtype} pass A split 3", lambda a=b_args: fused_bwd.launch_backward_fused(
            *a, splits_a=3, block_d_a=16)))  # fmt: skip
        calls.append((f"bwd n={n} {dtype} pass B maxnreg=168", lambda a=b_args: fused_bwd.launch_backward_fused(
            *a, block_t=32, block_d=128, maxnreg=168)))  # fmt: skip
        calls.append((f"bwd n={n} {dtype} pass B mm_scratch", lambda a=b_args: fused_bwd.launch_backward_fused(
            *a, block_t=32, block_d=128, mm_scratch=True)))  # fmt: skip
        calls.append((f"bwd n={n} {dtype} loop_stages=2", lambda a=b_args: fused_bwd.launch_backward_fused(
            *a, block_t=32, block_d=128, loop_stages=2, loop_stages_a=2)))  # fmt: skip
        p_args = [post[k] for k in ("x", "h_res", "h_out", "h_post")]
        calls.append((f"seam n={n} {dtype}", lambda p=p_args, a=f_args, h=h_pre_prev: seam.launch_seam_fwd(
            *p, h, *a[1:], 1e-6, 1e-6)))  # fmt: skip
        s_args = [*p_args, None, pre["phi"], pre["alpha"], pre["gamma"], post["x"], coeff, torch.rand(70),
                  torch.randn(70, n * n + 2 * n), coeff, pre["x"][..., 0, :], coeff, torch.rand(70, n, n), coeff,
                  post["x"]]  # fmt: skip
        for hpp in (None, h_pre_prev):
            calls.append((f"seam_bwd n={n} {dtype} h_pre_prev={hpp is not None}", lambda a=s_args, h=hpp:
                          seam_bwd.launch_seam_bwd(*a[:4], h, *a[5:])))  # fmt: skip
        calls.append((f"seam_bwd n={n} {dtype} 64 x 16 on 8 warps", lambda a=s_args, h=h_pre_prev:
                      seam_bwd.launch_seam_bwd(*a[:4], h, *a[5:], block_t=64, block_d=16, num_warps=8)))  # fmt: skip
        if n <= decode.MAX_N:
            for hpp in (None, h_pre_prev):
                calls.append((f"decode n={n} {dtype} delayed={hpp is not None}", lambda p=p_args, a=f_args,
                              h=hpp: decode.launch_decode(*p, h, *a[1:], 1e-6, 1e-6, 20, 1e-6)))  # fmt: skip
            calls.append((f"decode n={n} {dtype} sinkhorn_launch 8 warps", lambda p=p_args, a=f_args, h=h_pre_prev:
                          decode.launch_decode(*p, h, *a[1:], 1e-6, 1e-6, 20, 1e-6, sinkhorn_launch=True,
                                               num_warps=8)))  # fmt: skip
            calls.append((f"decode n={n} {dtype} one-token blocks", lambda p=p_args, a=f_args, h=h_pre_prev:
                          decode.launch_decode(*p, h, *a[1:], 1e-6, 1e-6, 20, 1e-6, block_t=1, unroll=64)))  # fmt: skip
            for collapse in decode.COLLAPSES:  # block_d 16: several splits, so "wait" has programs that wait
                calls.append((f"decode n={n} {dtype} plain, collapse {collapse}", lambda p=p_args, a=f_args,
                              c=collapse: decode.launch_decode(*p, None, *a[1:], 1e-6, 1e-6, 20, 1e-6, block_d=16,
                                                               collapse=c)))  # fmt: skip
            for order in sinkhorn.ORDERS:  # every Sinkhorn tile order, whichever the installed Triton takes by default
                calls.append((f"decode n={n} {dtype} sink_order {order}", lambda p=p_args, a=f_args, h=h_pre_prev,
                              o=order: decode.launch_decode(*p, h, *a[1:], 1e-6, 1e-6, 20, 1e-6, block_t=1,
                                                            sink_order=o)))  # fmt: skip
    return calls


def default_launches(shapes) -> list[tuple[str, Callable[[], object]]]:
    """(label, call) of each op's launcher as the training path and decode call it, default options, at
    each shape (benchmarks.shapes.Shape): the pre forward (its GPU split choice), the delayed pre, the fused
    backward of each, post, Sinkhorn and, up to DECODE_MAX_T tokens, the decode boundary (delayed and plain)."""
    from mhc_ops._impl import DECODE_MAX_T
    from mhc_ops.kernels import decode, fused_bwd, fwd, post, sinkhorn
    from mhc_ops.kernels._common import cdiv, default_block_d

    def empty(*size, dtype=torch.float32):
        return torch.empty(size, dtype=dtype)

    calls = []
    for shape in shapes:
        T, n, D, O = shape.T, shape.n, shape.D, shape.n * shape.n + 2 * shape.n
        x, x1 = empty(T, n, D, dtype=torch.bfloat16), empty(T, D, dtype=torch.bfloat16)
        phi, alpha, bias, gamma = empty(O, n * D), empty(3), empty(O), empty(n, D)
        h_pre, h_post, h_res, inv_rms, h_mix = empty(T, n), empty(T, n), empty(T, n, n), empty(T), empty(T, O)
        label = shape.label
        splits = {delayed: fwd.auto_splits(cdiv(T, 64), (1 if delayed else n) * cdiv(D, default_block_d(n, None)), SMS)
                  for delayed in (False, True)}  # fmt: skip
        saved = (inv_rms, h_mix, h_pre, h_post, gamma, x, 1e-6)
        calls += [
            (f"{label} fwd", lambda a=(x, phi, alpha, bias, gamma), s=splits[False]: fwd.launch_fwd(
                *a, 1e-6, 1e-6, splits=s)),
            (f"{label} delayed fwd", lambda a=(x, phi, alpha, bias, gamma), s=splits[True], h=h_pre: fwd.launch_fwd(
                *a, 1e-6, 1e-6, splits=s, delayed=True, h_pre_prev=h)),
            (f"{label} bwd", lambda a=(x, phi, alpha, x1, h_post, h_res), s=saved: fused_bwd.launch_backward_fused(
                *a, *s)),
            (f"{label} delayed bwd", lambda a=(x, phi, alpha, x1, h_post, h_res), s=saved, h=h_pre:
             fused_bwd.launch_backward_fused(*a, *s, delayed=True, h_pre_prev=h, dh_pre=h)),
            (f"{label} post", lambda a=(x, h_res, x1, h_post): (post.launch_post_fwd(*a), post.launch_post_bwd(*a, a[0]))),
            (f"{label} sinkhorn", lambda L=h_res: (sinkhorn.launch_sinkhorn_fwd(L, 20, 1e-6),
                                                  sinkhorn.launch_sinkhorn_bwd(L, L, 20, 1e-6))),
        ]  # fmt: skip
        if T <= DECODE_MAX_T and n <= decode.MAX_N:
            for delayed in (True, False):
                calls.append((f"{label} decode{' delayed' if delayed else ''}", lambda a=(x, h_res, x1, h_post),
                              h=h_pre if delayed else None, w=(phi, alpha, bias, gamma): decode.launch_decode(
                                  *a, h, *w, 1e-6, 1e-6, 20, 1e-6)))  # fmt: skip
    return calls


def compile_one(item: tuple) -> tuple[str, str | None]:
    """Compile one specialisation (name, sig, constexprs, attrs, options, backend, arch, registers, sass, loops) ->
    (its description, None or the compiler's last error line). registers: the description ends with ptxas's
    registers per thread and spill bytes (ptxas -v on the compiled PTX); sass: then a line of sass_mix; loops: then
    a line of each of sass_loops."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, sig, constexprs, attrs, options, backend, arch, registers, sass, loops = item
    module, _, kernel = name.partition(":")
    jit = getattr(importlib.import_module(module), kernel).jit
    desc = f"{kernel} " + ", ".join(f"{k}={v}" for k, v in constexprs.items() if k.isupper()) + f" {options}"
    try:
        compiled = triton.compile(ASTSource(jit, sig, constexprs, attrs), target=GPUTarget(backend, arch, 32),
                                  options=options)  # fmt: skip
    except Exception as e:  # noqa: BLE001  (any compiler failure is the finding)
        return desc, _innermost(e)
    desc += f"  [{ptxas_usage(compiled.asm['ptx'], arch)}]" if registers else ""
    text = disassemble(compiled.asm["cubin"], arch) if sass or loops else ""  # nvdisasm once for both
    desc += f"\n    SASS {_mix(SASS_OP.findall(text))}" if sass else ""
    desc += "".join(f"\n    loop {loop}" for loop in sass_loops(text)) if loops else ""
    return desc, None


# SASS opcode classes --sass counts: tensor-core products, fp32 arithmetic, special functions (MUFU: rcp,
# exp, ...), warp shuffles, CTA barriers, shared, global and local (spill) memory
SASS_CLASSES = {"mma": ("HMMA", "HGMMA"), "fp32": ("FFMA", "FMUL", "FADD"), "mufu": ("MUFU",), "shfl": ("SHFL",),
                "bar": ("BAR",), "shared": ("LDS", "STS", "LDSM"), "global": ("LDG", "STG", "ATOMG", "RED"),
                "local": ("LDL", "STL")}  # fmt: skip


def disassemble(cubin: bytes, arch: int) -> str:
    """A compiled kernel's SASS text, from the wheel's nvdisasm."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        nvdisasm = os.path.join(os.path.dirname(get_ptxas(arch).path), "nvdisasm")
        return subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout


SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def _mix(ops: list[str]) -> str:
    counts = {k: sum(op in names for op in ops) for k, names in SASS_CLASSES.items()}
    return f"{len(ops)} instructions: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def sass_mix(cubin: bytes, arch: int) -> str:
    """'N instructions: mma a, fp32 b, ...' of a compiled kernel, from the wheel's nvdisasm: static counts
    (each instruction of the code once, a loop's body once), the classes of SASS_CLASSES."""
    return _mix(SASS_OP.findall(disassemble(cubin, arch)))


def sass_loops(sass: str) -> list[str]:
    """'LABEL: N instructions: mma a, ...' of each loop of a SASS text: the code from a label to a branch back to
    it, in the order of those branches (an inner loop before the loop around it; not the end's branch to itself).
    What one iteration issues, where sass_mix counts the whole kernel once."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*(\.L_x_\d+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"\bBRA\b[^`]*`\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            ops = [op for body in lines[labels[m.group(1)] : i + 1] for op in SASS_OP.findall(body)]
            if len(ops) > 1:  # not the branch to itself that pads the end of the code
                loops.append(f"{m.group(1)}: {_mix(ops)}")
    return loops


def ptxas_usage(ptx: str, arch: int) -> str:
    """'N registers, S B spilled' of a kernel's PTX, from the wheel's ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return f"{regs.group(1) if regs else '?'} registers, {spills.group(1) if spills else '?'} B spilled"


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
    parser.add_argument("--registers", action="store_true",
                        help="also each kernel's registers per thread and spill bytes (ptxas -v)")  # fmt: skip
    parser.add_argument("--sass", action="store_true",
                        help="also each kernel's SASS instruction mix (nvdisasm; static counts)")  # fmt: skip
    parser.add_argument("--loops", action="store_true",
                        help="also each loop's SASS instruction mix (one iteration's instructions; static counts)")  # fmt: skip
    parser.add_argument("--only", default=None, help="compile only kernels whose name matches this regex")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once (default: CPUs)")
    parser.add_argument("--shapes", default=None,
                        help="the default launches of the training and decode paths at these TxnxD shapes instead")  # fmt: skip
    args = parser.parse_args(argv)
    backend, _, arch = args.target.partition(":")
    if backend != "cuda" or not arch.isdigit():
        parser.error(f"--target: expected cuda:ARCH such as cuda:90, got {args.target!r}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 is set: the interpreter compiles nothing; run without it")
    try:
        only = re.compile(args.only or "")
    except re.error as e:
        parser.error(f"--only: expected a regular expression, got {args.only!r} ({e})")
    if args.shapes is not None:
        from .shapes import parsed_shapes

        calls = default_launches(parsed_shapes(parser, args.shapes))
    else:
        calls = workloads()
    unique: dict[str, tuple] = {}
    labels: dict[str, str] = {}  # specialisation -> the first --shapes workload that launched it
    failed = 0
    with recording() as records:
        for label, call in calls:
            first = len(records)
            try:
                call()
            except Exception as e:  # noqa: BLE001  (a launcher that raises on valid inputs is a finding too)
                failed += 1
                print(f"FAILED  launching {label}\n    {type(e).__name__}: {e}", flush=True)
            for jit, a, kw in records[first:]:
                if not only.search(jit.fn.__name__):
                    continue
                name, sig, constexprs, attrs, options = spec(jit, a, kw)
                key = repr((name, sorted(sig.items()), sorted(constexprs.items(), key=str), sorted(attrs),
                            sorted(options.items())))  # fmt: skip
                unique.setdefault(key, (name, sig, constexprs, attrs, options, backend, int(arch), args.registers,
                                        args.sass, args.loops))  # fmt: skip
                labels.setdefault(key, label)
    import triton

    print(f"# {len(records)} launches recorded, {len(unique)} kernel specialisations compiled for {args.target} "
          f"by Triton {triton.__version__}\n")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for key, (desc, error) in zip(unique, pool.map(compile_one, unique.values())):
            failed += error is not None
            desc = f"[{labels[key]}] {desc}" if args.shapes is not None else desc
            print(f"{'FAILED' if error else 'ok'}  {desc}" + (f"\n    {error}" if error else ""), flush=True)
    print(f"\n{len(unique)} specialisations, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
