"""Diagnose one stage (of mhc_pre, sinkhorn or mhc_post), or mhc_pre's whole chain, against the golden reference.

    python -m mhc_ops.diagnose STAGE [--lead 2,64] [--n 4] [--D 128] [--dtype bfloat16] [--seed 42]
                               [--x-scale 1] [--no-gamma] [--grad-x-post] [--device cpu|cuda]
                               [--backend golden|triton]

STAGE is pre_fwd, dh_mix, dx, dparams, dgamma, pre_bwd, sinkhorn_fwd, sinkhorn_bwd, post_fwd, post_bwd or ``pipeline``
(mhc_pre's chain); ``--lead`` sets the layout (``2,64`` is
BSND with B=2, S=64; ``128`` is TND). A stage runs on its golden inputs (the fixture builder's chain,
rounded as stored) and each output is judged by the accuracy rule (mhc_ops.golden.accuracy), then
broken down the ways the historical bugs showed themselves (docs/bugs/): error buckets, the ratio
kernel/golden, per stream and per part [pre | post | res], and the elements the kernel never wrote.
``pipeline`` puts one stage at a time on the backend and every other on the fp32 golden, judges every
boundary, and names the first stage whose own outputs break the rule. Exit status 1 when anything
breaks the rule.

Unwritten elements: the kernels allocate outputs and workspaces with ``torch.empty``; inside the run
a torch function mode (this thread's, for this call only: ``torch.empty`` itself is not replaced)
fills what it returns with NaN, and when NaNs come out it runs again with a second fill value. An
element is unwritten when it holds the fill value both times; a NaN that does not follow the fill is
computed (or read from an unwritten workspace).

Tests inject mutants through ``impl`` / ``impls`` (a callable taking the stage's inputs by name and
returning its outputs by name); a chain runs them through a Pipeline's own stage table, never the
registry's ``STAGES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from .golden import STAGE_IO, STAGE_NAMES, Bundle, Case, build, judge, run_golden
from .golden.accuracy import Verdict
from .golden.fixtures import DTYPES
from .stages import BACKENDS, BACKWARD_INPUTS, FORWARD_INPUTS, STAGES, Pipeline, Stage

# |out - ref| buckets (the historical log's: < 0.1, 0.1..1, > 1) and |out - ref| / |ref| buckets.
ABS_EDGES = (0.1, 1.0)
REL_EDGES = (1e-6, 1e-3, 1e-1)
# The ratio out/ref is taken where |ref| >= RATIO_FLOOR * rms(ref): near-zero references only add noise.
RATIO_FLOOR = 0.1
# std / |mean| of the ratio above this: the ratio varies (a computation error); below it the ratio is
# constant, and a constant away from 1 by more than this is a scale error. bf16 rounding stays < 0.01.
RATIO_SPREAD = 0.02
# Second fill value of the unwritten check: exact in bf16, fp16 and fp32, and no plausible result.
SENTINEL = -12288.0

# Outputs with a stream axis: [.., n, D] or [.., n*D] (dphi: [O, n*D]) and [.., n].
STREAM_ND = ("dx", "dvecX_mm", "dgamma", "dphi")
STREAM_N = ("dh_pre", "dh_pre2", "dh_post2", "h_pre", "h_post")
# Outputs with an axis in the coefficient layout [pre (n) | post (n) | res (n*n)]; dalpha is (pre, post, res).
PART_AXIS = {"h_mix": -1, "dh_mix": -1, "dbias": -1, "dalpha": -1, "dphi": 0}
PARTS = ("pre", "post", "res")

Impl = Callable[..., Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Ratio:
    """out/ref over the elements where |ref| is not small and out is finite."""

    mean: float
    std: float
    min: float
    max: float
    count: int

    @property
    def kind(self) -> str:
        """one: ~1; constant: a scale error; varies: a computation error; single: one element away
        from 1, which cannot tell the two apart."""
        if not self.std <= RATIO_SPREAD * abs(self.mean):
            return "varies"
        if abs(self.mean - 1) <= RATIO_SPREAD:
            return "one"
        return "constant" if self.count > 1 else "single"

    @property
    def reading(self) -> str:
        return {
            "one": "ratio ~ 1: no scale error",
            "constant": f"constant ratio {self.mean:.4g}: a scale error (a factor missing or applied twice)",
            "varies": "the ratio varies: a computation error (wrong or missing terms), not a scale",
            "single": f"ratio {self.mean:.4g} of a single element: scale or computation error, cannot tell",
        }[self.kind]

    @property
    def tag(self) -> str:
        return {
            "one": "ratio ~ 1",
            "constant": f"ratio const {self.mean:.4g}",
            "varies": "ratio varies",
            "single": f"ratio {self.mean:.4g}",
        }[self.kind]


@dataclass(frozen=True)
class Slice:
    """One stream or one part of an output."""

    label: str  # "stream i" or "pre" / "post" / "res"
    verdict: Verdict
    max_abs: float
    nan: int
    unwritten: int
    size: int
    ratio: Ratio | None


@dataclass(frozen=True)
class OutputReport:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    verdict: Verdict
    max_abs: float  # statistics of |out - ref| over the finite elements of out
    mean_abs: float
    std_abs: float
    abs_buckets: tuple[int, ...]  # counts per ABS_EDGES bucket, finite elements only
    rel_buckets: tuple[int, ...]  # counts per REL_EDGES bucket, finite elements only
    nan: int  # non-finite elements of out
    unwritten: int  # elements the implementation never stored (a subset of nan)
    ratio: Ratio | None
    streams: tuple[Slice, ...]
    parts: tuple[Slice, ...]

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StageReport:
    stage: str
    outputs: tuple[OutputReport, ...]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def __getitem__(self, name: str) -> OutputReport:
        return next(o for o in self.outputs if o.name == name)


@dataclass(frozen=True)
class PipelineReport:
    """rows[s][t]: the outputs of stage t when only stage s runs on the backend under test."""

    rows: dict[str, dict[str, StageReport]]

    @property
    def first_diverging(self) -> str | None:
        """The first stage whose own outputs break the rule when it alone leaves the golden."""
        return next((s for s, chain in self.rows.items() if not chain[s].ok), None)

    @property
    def ok(self) -> bool:
        return all(r.ok for chain in self.rows.values() for r in chain.values())


# ---------------------------------------------------------------------------------------------------
# Running an implementation with its allocations pre-filled


class _PrefilledEmpty(TorchFunctionMode):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.empty and out.is_floating_point():
            out.fill_(self.value)
        return out


def prefilled_empty(value: float) -> TorchFunctionMode:
    """A context in which torch.empty returns floating-point tensors filled with ``value``: a torch
    function mode, active in this thread only while entered; nothing global is replaced."""
    return _PrefilledEmpty(value)


def run_prefilled(fn: Callable[[], Mapping]) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (the tensors fn() returns from a NaN-filled run, {name: unwritten mask} for those with NaNs).

    An element is unwritten when it holds the fill value in the NaN-filled run and in a SENTINEL-filled one."""
    with prefilled_empty(math.nan):
        out = dict(fn())
    with_nan = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.isnan().any()]
    if not with_nan:
        return out, {}
    with prefilled_empty(SENTINEL):
        again = fn()
    return out, {k: out[k].isnan() & (again[k] == SENTINEL) for k in with_nan}


def stage_table(impls: Mapping[str, Impl]) -> dict[str, Stage]:
    """The registry's stages with impls[s] as stage s's "triton" implementation: a Pipeline's table
    (how a mutant enters a chain; STAGES itself is not touched)."""
    return {s: dataclasses.replace(STAGES[s], triton=f) for s, f in impls.items()}


# ---------------------------------------------------------------------------------------------------
# Analysis


def _ratio(out: torch.Tensor, ref: torch.Tensor) -> Ratio | None:
    """out, ref: float64 of one shape."""
    rms = ref.square().mean().sqrt()
    keep = out.isfinite() & (ref.abs() >= RATIO_FLOOR * rms) & (ref != 0)
    if not keep.any():
        return None
    r = out[keep] / ref[keep]
    std = r.std().item() if r.numel() > 1 else 0.0
    return Ratio(r.mean().item(), std, r.min().item(), r.max().item(), r.numel())


def _buckets(values: torch.Tensor, edges: tuple[float, ...]) -> tuple[int, ...]:
    idx = torch.bucketize(values, torch.tensor(edges, dtype=values.dtype, device=values.device), right=True)
    return tuple(torch.bincount(idx, minlength=len(edges) + 1).tolist())


def _abs_stats(diff: torch.Tensor) -> tuple[float, float, float]:
    """(max, mean, std) of |error| over the finite elements; NaN when there are none."""
    if diff.numel() == 0:
        return math.nan, math.nan, math.nan
    return diff.max().item(), diff.mean().item(), diff.std().item() if diff.numel() > 1 else 0.0


def _slice(name: str, label: str, out, ref64, ref32, unwritten) -> Slice:
    finite = out.isfinite()
    return Slice(
        label,
        judge(f"{name} {label}", out, ref64, ref32),
        _abs_stats((out - ref64).abs()[finite])[0],
        int((~finite).sum()),
        int(unwritten.sum()),
        out.numel(),
        _ratio(out, ref64),
    )


def _by_stream(name: str, t: torch.Tensor, n: int, D: int) -> list[torch.Tensor]:
    if name in STREAM_ND:
        return list(t.reshape(-1, n, D).transpose(0, 1).reshape(n, -1))
    if name in STREAM_N:
        return list(t.reshape(-1, n).t())
    return []


def _by_part(name: str, t: torch.Tensor, n: int) -> list[torch.Tensor]:
    if name not in PART_AXIS:
        return []
    sizes = (1, 1, 1) if name == "dalpha" else (n, n, n * n)
    return list(t.split(sizes, dim=PART_AXIS[name]))


def analyse(
    name: str,
    out: torch.Tensor,
    ref64: torch.Tensor,
    ref32: torch.Tensor,
    *,
    n: int,
    D: int,
    unwritten: torch.Tensor | None = None,
) -> OutputReport:
    """Every figure of one output: out under test, ref64 the float64 golden on the same inputs, ref32
    the fp32 golden (the rule's yardstick), unwritten the mask of elements never stored (None: none)."""
    o, r64, r32 = out.detach().double(), ref64.detach().double(), ref32.detach().double().to(ref64.device)
    o = o.to(r64.device)
    unw = torch.zeros_like(o, dtype=torch.bool) if unwritten is None else unwritten.to(o.device)
    finite = o.isfinite()
    diff = (o - r64).abs()[finite]
    rel = diff / r64.abs()[finite]  # inf where ref is 0 and out is not, nan (dropped) where both are
    rel = rel[~rel.isnan()]
    max_abs, mean_abs, std_abs = _abs_stats(diff)
    stream_views = [_by_stream(name, t, n, D) for t in (o, r64, r32, unw)]
    streams = tuple(_slice(name, f"stream {i}", *sl) for i, sl in enumerate(zip(*stream_views)))
    part_views = [_by_part(name, t, n) for t in (o, r64, r32, unw)]
    parts = tuple(_slice(name, p, *sl) for p, sl in zip(PARTS, zip(*part_views)))
    return OutputReport(
        name=name,
        shape=tuple(out.shape),
        dtype=out.dtype,
        verdict=judge(name, o, r64, r32),
        max_abs=max_abs,
        mean_abs=mean_abs,
        std_abs=std_abs,
        abs_buckets=_buckets(diff, ABS_EDGES),
        rel_buckets=_buckets(rel, REL_EDGES),
        nan=int((~finite).sum()),
        unwritten=int(unw.sum()),
        ratio=_ratio(o, r64),
        streams=streams,
        parts=parts,
    )


def _report(stage: str, out: Mapping, ref64: Mapping, ref32: Mapping, case: Case, unwritten: Mapping) -> StageReport:
    return StageReport(
        stage,
        tuple(
            analyse(k, out[k], ref64[k], ref32[k], n=case.n, D=case.D, unwritten=unwritten.get(k))
            for k in STAGE_IO[stage]["outputs"]
            if k in ref64  # a composite's dgamma without gamma has no reference
        ),
    )


def analyse_stage(stage: str, bundle: Bundle, impl: Impl | None = None, backend: str = "triton") -> StageReport:
    """Run one stage on the bundle's golden inputs (impl, or the registry's ``backend``) and analyse
    every output against the fp64 golden on the same inputs."""
    inputs, ref64 = bundle.stage_view(stage)
    ref32 = run_golden(stage, inputs, "fp32")
    run = impl or functools.partial(STAGES[stage].run, backend)
    out, unwritten = run_prefilled(lambda: run(**inputs))
    return _report(stage, out, ref64, ref32, bundle.case, unwritten)


def chain_inputs(bundle: Bundle) -> dict:
    """The keyword arguments of Pipeline.run for the bundle's inputs."""
    kw = {k: bundle.tensors[k] for k in (*FORWARD_INPUTS, *BACKWARD_INPUTS)}
    return kw | {"norm_eps": bundle.case.norm_eps, "hc_eps": bundle.case.hc_eps}


def analyse_chain(bundle: Bundle, impls: Mapping[str, Impl]) -> dict[str, StageReport]:
    """Run pre_fwd -> dh_mix -> dx -> dparams -> dgamma with the stages of ``impls`` on those
    implementations and every other stage on the fp32 golden; analyse every stage's outputs at its
    boundary against the fixture's fp64 reference, with the all-golden fp32 chain as the yardstick."""
    kwargs = chain_inputs(bundle)
    ref32 = Pipeline("golden").run(**kwargs)
    chain = Pipeline("golden", table=stage_table(impls), **dict.fromkeys(impls, "triton"))
    env, unwritten = run_prefilled(lambda: chain.run(**kwargs))
    return {s: _report(s, env, bundle.reference[s], ref32, bundle.case, unwritten) for s in bundle.stages()}


def analyse_pipeline(
    bundle: Bundle, impls: Mapping[str, Impl] | None = None, backend: str = "triton"
) -> PipelineReport:
    """One chain per stage, with that stage alone on ``impls[stage]`` (or the registry's ``backend``)."""
    impls = impls or {}
    return PipelineReport(
        {
            s: analyse_chain(bundle, {s: impls.get(s) or functools.partial(STAGES[s].run, backend)})
            for s in bundle.stages()
        }
    )


# ---------------------------------------------------------------------------------------------------
# Text


def _bucket_line(counts: tuple[int, ...], edges: tuple[float, ...], fmt: str) -> str:
    e = [format(v, fmt) for v in edges]
    labels = [f"< {e[0]}"] + [f"{a}..{b}" for a, b in zip(e, e[1:])] + [f"> {e[-1]}"]
    total = max(sum(counts), 1)
    return "   ".join(f"{lab}: {c} ({100 * c / total:.1f}%)" for lab, c in zip(labels, counts))


def _slice_line(s: Slice) -> str:
    mark = "ok  " if s.verdict.ok else "FAIL"
    ratio = s.ratio.tag if s.ratio else "no ratio"
    return (
        f"{mark} err {s.verdict.err:.3e} (bound {s.verdict.bound:.3e})  max |error| {s.max_abs:.3e}"
        f"  unwritten {s.unwritten}/{s.size}  NaN {s.nan}  {ratio}"
    )


def format_output(r: OutputReport) -> str:
    lines = [
        str(r.verdict),
        f"    shape {list(r.shape)} {str(r.dtype).removeprefix('torch.')}: {r.size} elements,"
        f" {r.nan} not finite, {r.unwritten} unwritten (outputs pre-filled with NaN)",
        f"    |error|    max {r.max_abs:.3e}  mean {r.mean_abs:.3e}  std {r.std_abs:.3e}",
        f"    |error|    {_bucket_line(r.abs_buckets, ABS_EDGES, 'g')}",
        f"    relative   {_bucket_line(r.rel_buckets, REL_EDGES, '.0e')}",
    ]
    if r.ratio is None:
        lines.append("    ratio      no element large enough to take a ratio")
    else:
        q = r.ratio
        lines.append(
            f"    ratio kernel/golden  mean {q.mean:.7g}  std {q.std:.3g}  min {q.min:.7g}  max {q.max:.7g}"
            f"  ({q.count} elements): {q.reading}"
        )
    for title, slices in (("per stream", r.streams), ("per part", r.parts)):
        if slices:
            lines.append(f"    {title}")
            lines += [f"      {s.label:<9} {_slice_line(s)}" for s in slices]
    return "\n".join(lines)


def format_stage(report: StageReport) -> str:
    failed = [o.name for o in report.outputs if not o.ok]
    verdict = "PASS" if report.ok else f"FAIL ({', '.join(failed)})"
    body = "\n".join(format_output(o) for o in report.outputs)
    return f"{body}\nstage {report.stage}: {verdict}"


def format_pipeline(report: PipelineReport, backend: str) -> str:
    lines = [f"one stage at a time on {backend}, the others on the fp32 golden; verdicts at each boundary after it:"]
    for s, chain in report.rows.items():
        stages = list(chain)
        cells = []
        for t in stages[stages.index(s) :]:
            failed = [o.name for o in chain[t].outputs if not o.ok]
            cells.append(f"{t} " + (f"FAIL ({', '.join(failed)})" if failed else "ok"))
        lines.append(f"  {s:<8} on {backend}: " + " | ".join(cells))
    first = report.first_diverging
    if first is not None:
        lines += [f"first diverging stage: {first}", format_stage(report.rows[first][first])]
    elif not report.ok:
        lines.append("no stage breaks the rule on its own outputs; the failures above grow through the chain")
    else:
        lines.append("every boundary passes")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Command line


def _lead(text: str) -> tuple[int, ...]:
    lead = tuple(int(v) for v in text.split(","))
    if len(lead) not in (1, 2) or min(lead) < 1:
        raise argparse.ArgumentTypeError(f"expected B,S (BSND) or T (TND) with positive sizes, got {text!r}")
    return lead


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mhc_ops.diagnose",
        description="Run one stage (or mhc_pre's chain) on golden inputs and analyse its error.",
    )
    p.add_argument("stage", choices=(*STAGE_NAMES, "pipeline"))
    p.add_argument("--lead", type=_lead, default=(2, 64), help="B,S for layout BSND or T for TND (default 2,64)")
    p.add_argument("--n", type=int, default=4, help="streams (default 4)")
    p.add_argument("--D", type=int, default=128, help="hidden size per stream (default 128)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16", help="dtype of x (default bfloat16)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--x-scale", type=float, default=1.0, help="scale of x: far from 1 moves inv_rms far from 1")
    p.add_argument("--no-gamma", action="store_true", help="gamma None (no dgamma stage)")
    p.add_argument("--grad-x-post", action="store_true", help="add a grad_x_post into dx")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--backend", choices=BACKENDS, default="triton")
    return p


def _device(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None, impls: Mapping[str, Impl] | None = None) -> int:
    """Print the analysis; -> 0 when every output passes the accuracy rule, else 1.
    ``impls`` replaces the backend of the named stages (tests pass mutants)."""
    p = _parser()
    args = p.parse_args(argv)
    if args.stage == "dgamma" and args.no_gamma:
        p.error("stage dgamma needs gamma: drop --no-gamma")
    case = Case(
        lead=args.lead,
        n=args.n,
        D=args.D,
        dtype=args.dtype,
        seed=args.seed,
        gamma=not args.no_gamma,
        grad_x_post=args.grad_x_post,
        x_scale=args.x_scale,
        op=STAGE_IO[args.stage]["op"] if args.stage != "pipeline" else "mhc_pre",
    )
    device = _device(args)
    bundle = build(case, device)
    if case.op == "mhc_pre":
        inv_rms = bundle.tensors["inv_rms"]
        print(
            f"case {case} on {device}: T={case.T} n={case.n} D={case.D} nD={case.n * case.D} O={case.O};"
            f" inv_rms in [{inv_rms.min().item():.4g}, {inv_rms.max().item():.4g}]"
        )
    else:
        print(f"case {case} on {device}: T={case.T} n={case.n} D={case.D}")
    impls = impls or {}
    if args.stage == "pipeline":
        report = analyse_pipeline(bundle, impls, args.backend)
        print(format_pipeline(report, args.backend))
    else:
        backend = "injected" if args.stage in impls else args.backend
        print(f"stage {args.stage} on {backend}, fed the golden inputs")
        report = analyse_stage(args.stage, bundle, impls.get(args.stage), args.backend)
        print(format_stage(report))
    return 0 if report.ok else 1


def _needs_interpreter(argv: list[str]) -> bool:
    args = _parser().parse_args(argv)
    return _device(args) == "cpu" and args.backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1"


if __name__ == "__main__":
    if _needs_interpreter(sys.argv[1:]):
        # Triton chose compiled kernels when `import mhc_ops` defined them: start again with the interpreter.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        os.execve(sys.executable, [sys.executable, "-m", "mhc_ops.diagnose", *sys.argv[1:]], env)
    sys.exit(main())
