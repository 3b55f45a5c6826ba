"""python -m mhc_ops.train: train a small byte-level GPT whose residual is mHC (docs/train.md).

Every option is validated before anything is built, the memory estimate included: a bad value prints
one line naming the option on stderr and exits with status 2. Under torchrun, ``--dist ddp|fsdp`` runs
data-parallel. ``--resume DIR`` continues a run from its checkpoint; Ctrl-C stops at the next step with
a checkpoint, the summary and the plot, and exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import traceback

import torch

from mhc_ops.golden import COMPOSITES, STAGE_NAMES
from mhc_ops.stages import BACKENDS, PARTS

from . import checkpoint, loop, memory
from . import data as data_mod
from .model import GPT

# With --resume these may differ from the saved run: they choose how the same math runs, not what is
# learned. Every other option given with --resume must equal the saved value.
RESUME_MAY_CHANGE = ("device", "dtype", "dist", "backend", "stages", "compile", "compile_mode")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a job stopped by Ctrl-C

PROG = "python -m mhc_ops.train"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, no usage block: the message already names the option.
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    d = " (default: %(default)s)"
    model = p.add_argument_group("model")
    model.add_argument("--residual", choices=("mhc", "plain"), default="mhc", help="mHC streams, or h + F(h)" + d)
    model.add_argument("--n", type=int, default=4, help="mHC streams" + d)
    model.add_argument("--layers", type=int, default=4, help="transformer layers, two mHC blocks each" + d)
    model.add_argument("--dim", type=int, default=128, help="model width D" + d)
    model.add_argument("--heads", type=int, default=4, help="attention heads, a divisor of --dim" + d)
    model.add_argument("--seq", type=int, default=128, help="context length in bytes" + d)
    kernels = p.add_argument_group("mHC kernels")
    kernels.add_argument(
        "--backend", choices=("auto", "golden", "triton"), default="auto", help="auto: Triton on CUDA, golden on CPU"
    )
    kernels.add_argument(
        "--stages", metavar="NAME=BACKEND,...", help=f"per-stage backends; names: {', '.join(STAGE_NAMES)}"
    )
    kernels.add_argument(
        "--hc", choices=("standard", "delayed"), default="standard",
        help="standard: mhc_pre; delayed: DeepSeek-V4.1's delayed pre (h_in collapsed with the previous block's h_pre)" + d,
    )  # fmt: skip
    kernels.add_argument("--gamma", action="store_true", help="learned gamma [n, D] in mhc_pre (the dgamma stage)")
    kernels.add_argument(
        "--recompute", action="store_true", help="recompute the mHC intermediates in backward instead of saving them"
    )
    kernels.add_argument("--compile", action="store_true", help="torch.compile the model")
    kernels.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        help="torch.compile's mode, with --compile (default: default); reduce-overhead: CUDA graphs, CUDA only",
    )
    run = p.add_argument_group("training")
    run.add_argument("--steps", type=int, default=400, help="optimizer steps" + d)
    run.add_argument("--batch", type=int, default=8, help="global batch in sequences, split over the ranks" + d)
    run.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)" + d)
    run.add_argument("--warmup", type=int, help="warmup steps (default: a tenth of --steps)")
    run.add_argument("--weight-decay", type=float, default=0.1, help="on the Linear weights" + d)
    run.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm" + d)
    run.add_argument("--seed", type=int, default=0, help="initial weights and batches" + d)
    run.add_argument("--data", metavar="PATH", help="a UTF-8 file (default: the Python stdlib's source)")
    run.add_argument("--eval-every", type=int, default=50, metavar="STEPS", help="steps between evaluations" + d)
    run.add_argument("--eval-batches", type=int, default=8, help="validation batches of --batch sequences" + d)
    folder = p.add_argument_group("run folder")
    folder.add_argument("--out", metavar="DIR", help="output folder (default: runs/RESIDUAL); refused if it holds a run")
    folder.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its checkpoint.pt to its --steps"
    )
    folder.add_argument("--overwrite", action="store_true", help="replace the run in --out (its files only)")
    system = p.add_argument_group("system")
    system.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if torch sees a GPU, else cpu"
    )
    system.add_argument(
        "--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA, fp32 on CPU"
    )
    system.add_argument(
        "--dist", choices=("none", "ddp", "fsdp"), default="none", help="ddp / fsdp: run under torchrun"
    )
    return p


def parse_stages(text: str) -> dict[str, str]:
    """'dgamma=golden,dx=triton' -> {"dgamma": "golden", "dx": "triton"}; ValueError says what is wrong."""
    stages = {}
    for item in text.split(","):
        name, sep, backend = item.strip().partition("=")
        if not sep or not name or not backend:
            raise ValueError(f"expected NAME=BACKEND[,NAME=BACKEND...], got {text!r}")
        if name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
        choices = (*BACKENDS, PARTS) if name in COMPOSITES else BACKENDS
        if backend not in choices:
            raise ValueError(f"unknown backend {backend!r} for stage {name}; backends: {', '.join(choices)}")
        if name in stages:
            raise ValueError(f"stage {name} given twice")
        stages[name] = backend
    return stages


def format_stages(stages: dict | None) -> str | None:
    return None if stages is None else ",".join(f"{k}={v}" for k, v in stages.items())


def given_options(argv: list[str]) -> set[str]:
    """The dests of the options argv sets explicitly (a parser whose defaults are all suppressed)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


@dataclasses.dataclass
class Plan:
    """What main runs: the config, the corpus, the checkpoint to resume from, the files to replace."""

    cfg: loop.TrainConfig
    corpus: data_mod.Corpus
    resume: dict | None = None
    overwrite: list[str] = dataclasses.field(default_factory=list)


def parse(argv: list[str] | None = None) -> Plan:
    """argv -> the Plan; parser.error (exit 2, one line) on the first problem. With --resume the saved
    configuration is the default of every option, and only RESUME_MAY_CHANGE may differ from it."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is None:
        return validate(args, parser)
    run = pathlib.Path(args.resume)
    if args.overwrite:
        parser.error("argument --overwrite: not with --resume, which continues the run instead of replacing it")
    if args.out is not None and pathlib.Path(args.out).resolve() != run.resolve():
        parser.error(f"argument --out: --resume continues the run in its own folder ({run}), got {args.out}")
    try:
        ckpt = checkpoint.load(run / checkpoint.NAME)
    except checkpoint.CheckpointError as e:
        parser.error(f"argument --resume: {e}")
    saved = loop.TrainConfig(**{**ckpt["config"], "out": str(run)})
    if ckpt["step"] >= saved.steps:
        parser.error(f"argument --resume: {run} finished its {saved.steps} steps; there is nothing to continue")
    parser.set_defaults(**{**dataclasses.asdict(saved), "stages": format_stages(saved.stages), "out": str(run)})
    plan = validate(parser.parse_args(argv), parser, resuming=True)
    given = given_options(argv)
    for field in dataclasses.fields(saved):
        name = field.name
        if name in RESUME_MAY_CHANGE or name == "out":
            continue
        new, old = getattr(plan.cfg, name), getattr(saved, name)
        if new != old:
            # Only an option given on the command line can differ (the others default to the saved value).
            option = "--" + name.replace("_", "-") if name in given else "--resume"
            parser.error(f"argument {option}: the run in {run} has {name} {old!r}; resuming it with {new!r} would change it")
    if plan.corpus.sha256 != ckpt["corpus"]["sha256"]:
        parser.error(
            f"argument --resume: the corpus ({plan.corpus.source}) is not the run's ({ckpt['corpus']['source']}, "
            f"sha256 {ckpt['corpus']['sha256'][:12]}...)"
        )
    plan.resume = ckpt
    return plan


def check_memory(cfg: loop.TrainConfig, world: int, parser: argparse.ArgumentParser) -> None:
    """parser.error when memory.estimate says the run cannot fit in the device's free memory (CUDA) or
    the available RAM (CPU; the processes of a torchrun share it)."""
    with torch.device("meta"):  # parameter count without allocating
        params = sum(p.numel() for p in GPT(cfg.model_config()).parameters())
    est = memory.estimate(
        layers=cfg.layers,
        dim=cfg.dim,
        n=cfg.n,
        seq=cfg.seq,
        batch=cfg.batch,
        mhc=cfg.residual == "mhc",
        bf16=cfg.dtype == "bf16",
        params=params,
        world=world,
        sharded=cfg.dist == "fsdp",
    )
    if cfg.device == "cuda":
        device, processes = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))), 1
    else:
        device, processes = torch.device("cpu"), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    free, source = memory.available(device)
    need = est.total * processes
    if need > free:
        gib = lambda b: f"{b / memory.GiB:,.1f} GiB"  # noqa: E731
        each = f" for each of {processes} processes" if processes > 1 else ""
        parser.error(
            f"memory estimate: the run needs about {gib(need)} (activations {gib(est.activations)} for "
            f"{cfg.batch // world} x {cfg.seq} tokens, parameters with gradients and AdamW {gib(est.parameters)}"
            f"{each}), more than the {gib(free)} of {source}; lower --batch, --seq, --dim or --layers"
        )


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser, resuming: bool = False) -> Plan:
    """Every check before anything is built (the memory estimate counts the parameters of a model on
    the meta device); parser.error (exit 2) on the first failure. resuming: args continue the run in
    args.out, which therefore holds one."""
    for name in ("steps", "n", "layers", "dim", "heads", "seq", "batch", "eval_every", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    for name in ("lr", "grad_clip"):
        if not getattr(args, name) > 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    if args.weight_decay < 0:
        parser.error(f"argument --weight-decay: must be non-negative, got {args.weight_decay}")
    if args.warmup is not None and not 0 <= args.warmup <= args.steps:
        parser.error(f"argument --warmup: must be between 0 and --steps ({args.steps}), got {args.warmup}")
    if args.dim % args.heads:
        parser.error(f"argument --heads: must divide --dim ({args.dim}), got {args.heads}")

    stages = None
    if args.stages is not None:
        try:
            stages = parse_stages(args.stages)
        except ValueError as e:
            parser.error(f"argument --stages: {e}")
    if args.residual == "plain":
        for flag, used in (
            ("--stages", stages is not None),
            ("--gamma", args.gamma),
            ("--recompute", args.recompute),
            ("--backend", args.backend != "auto"),
            ("--hc", args.hc != "standard"),
        ):
            if used:
                parser.error(f"argument {flag}: only applies to --residual mhc")

    if stages and args.hc == "delayed":
        parser.error("argument --stages: per-stage backends do not apply with --hc delayed (use --backend)")
    if stages and "dgamma" in stages and not args.gamma:
        parser.error("argument --stages: stage dgamma runs only with --gamma (without gamma there is no dgamma)")

    if args.compile_mode is not None and not args.compile:
        parser.error(f"argument --compile-mode: {args.compile_mode} applies only with --compile")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda asked for, but torch sees no CUDA device on this machine")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compile_mode == "reduce-overhead" and args.device != "cuda":
        parser.error("argument --compile-mode: reduce-overhead records CUDA graphs, which need --device cuda")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        if args.backend == "triton":
            parser.error(
                "argument --backend: triton on CPU needs TRITON_INTERPRET=1 in the environment (or --device cuda)"
            )
        if stages and "triton" in stages.values():
            parser.error(
                "argument --stages: triton on CPU needs TRITON_INTERPRET=1 in the environment (or --device cuda)"
            )

    torchrun = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    world = int(os.environ["WORLD_SIZE"]) if torchrun else 1
    if args.dist != "none" and not torchrun:
        parser.error(
            f"argument --dist: {args.dist} runs under torchrun (torchrun --nproc_per_node=N -m mhc_ops.train ...)"
        )
    if args.dist == "none" and world > 1:
        parser.error(f"argument --dist: none, but torchrun started {world} processes; use --dist ddp or fsdp")
    if args.batch % world:
        parser.error(f"argument --batch: {args.batch} does not split over {world} processes")

    out = pathlib.Path(args.out if args.out is not None else f"runs/{args.residual}")
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {out} exists and is not a folder")
    present = checkpoint.holds_run(out) if out.is_dir() and not resuming else []
    if present and not args.overwrite:
        parser.error(
            f"argument --out: {out} already holds a run ({', '.join(present)}); continue it with --resume {out}, "
            f"or replace it with --overwrite"
        )
    try:
        corpus = data_mod.load(args.data, args.seq)
    except data_mod.DataError as e:
        parser.error(f"argument --data: {e}")

    cfg = loop.TrainConfig(
        steps=args.steps,
        n=args.n,
        layers=args.layers,
        dim=args.dim,
        heads=args.heads,
        seq=args.seq,
        batch=args.batch,
        lr=args.lr,
        residual=args.residual,
        backend=args.backend,
        stages=stages,
        gamma=args.gamma,
        compile=args.compile,
        compile_mode=(args.compile_mode or "default") if args.compile else None,
        recompute=args.recompute,
        seed=args.seed,
        out=str(out),
        data=args.data,
        device=args.device,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        dist=args.dist,
        dtype=args.dtype if args.dtype != "auto" else ("bf16" if args.device == "cuda" else "fp32"),
        warmup=args.warmup if args.warmup is not None else args.steps // 10,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        hc=args.hc,
    )
    check_memory(cfg, world, parser)
    return Plan(cfg, corpus, overwrite=present)


def format_summary(cfg: loop.TrainConfig, summary: dict, world: int) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    label = f"{cfg.residual}" + (f" n={cfg.n}, backend {cfg.backend}" if cfg.residual == "mhc" else "")
    if cfg.stages:
        label += ", stages " + ",".join(f"{k}={v}" for k, v in cfg.stages.items())
    if cfg.compile:
        label += f", torch.compile mode {cfg.compile_mode}"
    rows = [
        ("run", f"{label}; {cfg.device} {cfg.dtype}, {world} process(es), dist {cfg.dist}"),
        ("final train loss", num(summary["final_train_loss"], ".4f")),
        ("final val loss", num(summary["final_val_loss"], ".4f")),
        ("tokens/s", num(summary["tokens_per_s"], ",.0f")),
        ("peak memory", f"{summary['peak_mem_bytes'] / 2**20:,.1f} MiB ({summary['peak_mem_source']})"),
        ("wall time", f"{summary['wall_s']:.1f} s"),
        ("sinkhorn max dev", num(summary["sinkhorn_max_dev"], ".2e")),
        ("h_res gain", num(summary["h_res_gain"], ".4f")),
        ("output", cfg.out),
    ]
    width = max(len(k) for k, _ in rows)
    rule = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([rule, *(f"{k:<{width}}  {v}" for k, v in rows), rule])


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Before the first step, or a second Ctrl-C while the first one's stop was pending.
        print(f"{PROG}: interrupted: stopped at once, nothing more written (a checkpoint of an earlier "
              "evaluation stays in the run folder)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    plan = parse(argv)
    cfg = plan.cfg
    ctx = loop.setup(cfg)
    finished = False
    try:
        if ctx.main:
            for name in plan.overwrite:
                (pathlib.Path(cfg.out) / name).unlink()
        summary = loop.train(cfg, plan.corpus, ctx, plan.resume)
        finished = True
    except Exception as e:
        if cfg.dist == "none":
            raise
        # torchrun sees the non-zero exit and stops the other ranks (which may wait in a collective).
        traceback.print_exc()
        print(
            f"{PROG}: error: rank {ctx.rank} of {ctx.world} failed: {type(e).__name__}: {e}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        loop.teardown(cfg, finished)
    if summary["interrupted"]:
        print(
            f"{PROG}: interrupted at step {summary['steps_done']} of {cfg.steps}: wrote {checkpoint.NAME}, "
            f"summary.json and loss.png in {cfg.out}; continue with --resume {cfg.out}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if ctx.main:
        print(format_summary(cfg, summary, ctx.world))
    return 0


if __name__ == "__main__":
    loop.exit_process(main())
