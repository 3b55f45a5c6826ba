"""The training loop: one process or data-parallel (DDP / FSDP2), evaluation, metrics, checkpoints,
resume, Ctrl-C and summary.

Data parallelism splits each global batch of ``batch`` rows over the ranks (``data.train_batch``), so N
processes compute the same mean loss and gradient as one process, up to the order of fp32 sums.
Evaluation is sharded the same way (every rank evaluates its rows of the same validation batches and
the sums are all-reduced: FSDP needs every rank in each forward anyway); rank 0 alone logs and writes.

Every evaluation writes DIR/checkpoint.pt (checkpoint.py); a run resumed from it replays the same
steps on the same state, so on CPU its losses are bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from tqdm import tqdm

from . import checkpoint
from . import data as data_mod
from .model import GPT, ModelConfig, branch_modules, hyper_connections, loss_fn, mhc_health
from .plot import plot_runs

# The cosine decays the learning rate to this fraction of --lr at the last step.
MIN_LR_FRACTION = 0.1


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    n: int
    layers: int
    dim: int
    heads: int
    seq: int
    batch: int  # global: split over the ranks
    lr: float
    residual: str
    backend: str
    stages: dict | None
    gamma: bool
    compile: bool
    compile_mode: str | None  # torch.compile's mode with compile ("default", "reduce-overhead", ...), else None
    recompute: bool
    seed: int
    out: str
    data: str | None
    device: str  # "cpu" | "cuda" (--device auto resolved)
    eval_every: int
    eval_batches: int
    dist: str
    dtype: str  # "fp32" | "bf16": bf16 is autocast (none/ddp) or FSDP's param_dtype, the mHC parameters stay fp32
    warmup: int
    weight_decay: float
    grad_clip: float
    hc: str = "standard"  # "standard" (mhc_pre) | "delayed" (DeepSeek-V4.1's delayed pre)

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            layers=self.layers,
            dim=self.dim,
            heads=self.heads,
            seq=self.seq,
            n=self.n,
            residual=self.residual,
            backend=self.backend,
            stages=self.stages,
            gamma=self.gamma,
            recompute=self.recompute,
            delayed=self.hc == "delayed",
        )


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


# Whether this process joined a gloo group: its worker threads outlive teardown (exit_process).
_GLOO = False


def setup(cfg: TrainConfig) -> Context:
    """Joins the process group under torchrun (NCCL on CUDA with device LOCAL_RANK, gloo on CPU)."""
    global _GLOO
    if cfg.dist == "none":
        return Context(0, 1, torch.device(cfg.device))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cfg.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        _GLOO = True
    return Context(dist.get_rank(), dist.get_world_size(), device)


def teardown(cfg: TrainConfig, finished: bool) -> None:
    """Leaves the process group. After a finished run every rank first waits for the others, so no rank
    destroys the group while a peer still talks to it. After a failure no barrier: the peers may wait
    in a collective the failed rank never joins, and torchrun stops them. destroy_process_group does
    not stop gloo's worker threads (exit_process says why and what ends them)."""
    if cfg.dist != "none" and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def exit_process(status: int) -> NoReturn:
    """Ends the command with status. A process that joined a gloo group ends without the interpreter's
    finalization (os._exit, after flushing stdout and stderr): destroy_process_group leaves the group
    alive when anything else holds it (under FSDP torch does; under DDP torch.distributed.nn's default
    arguments do when that module is first imported after init_process_group), and then gloo's worker
    threads run on, one maybe still destroying the work of the last collectives (the teardown barrier
    keeps them until its worker drops it, after the barrier has returned). Releasing a tensor that
    Python created takes the GIL; once the interpreter finalizes, taking it ends the thread with
    pthread_exit, whose unwinding through the destructor calls std::terminate: the SIGABRT
    "terminate called without an active exception" of docs/bugs/gloo-teardown-abort.md. Without
    finalization the threads end with the process, wherever they are; every file of the run is
    written and closed before. Any other process exits normally."""
    if _GLOO:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def wrap(net: GPT, cfg: TrainConfig, ctx: Context) -> torch.nn.Module:
    """The module the training step calls: net itself, DDP around it, or net sharded in place by FSDP2."""
    if cfg.dist == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.dist == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world,))
        if cfg.dtype == "bf16":
            low = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            # The mHC parameters (phi, alpha, bias) stay fp32; the streams entering the module keep
            # their dtype (bf16) instead of being cast to the policy's.
            fp32 = MixedPrecisionPolicy(
                param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False
            )
        else:
            low = fp32 = MixedPrecisionPolicy()
        # Innermost first: a fully_shard unit takes the parameters not already in a unit below it, so
        # each branch is a bf16 unit, each HyperConnection a unit of only its own mHC parameters, and the
        # root holds the embeddings, the final norm and the head.
        for branch in branch_modules(net):
            fully_shard(branch, mesh=mesh, mp_policy=low)
        for hc in hyper_connections(net):
            if not hc.disable:  # the plain residual has no mHC parameters
                fully_shard(hc, mesh=mesh, mp_policy=fp32)
        fully_shard(net, mesh=mesh, mp_policy=low)
    return net


def make_optimizer(net: GPT, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on the Linear weights only (not on embeddings, norms or the mHC parameters,
    whose bias holds the identity preset)."""
    decay = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.Linear)}
    params = list(net.parameters())
    groups = [
        {"params": [p for p in params if id(p) in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> LRScheduler:
    """Step s (0-based) runs at cfg.lr · (s + 1) / warmup during the cfg.warmup warmup steps (LinearLR),
    then on a cosine from cfg.lr down to MIN_LR_FRACTION · cfg.lr over the remaining steps
    (CosineAnnealingLR); SequentialLR chains the two. One scheduler.step() per optimizer step."""
    parts = []
    if cfg.warmup > 0:
        # LinearLR's factor goes from start_factor at its step 0 to 1 at its step total_iters.
        parts.append(LinearLR(opt, start_factor=1 / cfg.warmup, total_iters=max(1, cfg.warmup - 1)))
    if cfg.steps > cfg.warmup:
        parts.append(CosineAnnealingLR(opt, T_max=cfg.steps - cfg.warmup, eta_min=cfg.lr * MIN_LR_FRACTION))
    return parts[0] if len(parts) == 1 else SequentialLR(opt, parts, milestones=[cfg.warmup])


def peak_memory(device: torch.device) -> tuple[int, str]:
    """-> (bytes, what was measured): CUDA's peak allocated memory, or the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss if sys.platform == "darwin" else maxrss * 1024, "getrusage ru_maxrss (CPU process peak RSS)"


def _all_sum(values: list[float], ctx: Context) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def _autocast(cfg: TrainConfig, ctx: Context):
    # FSDP applies bf16 through its mixed-precision policy; without FSDP, autocast.
    if cfg.dtype == "bf16" and cfg.dist != "fsdp":
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(net: GPT, batches, cfg: TrainConfig, ctx: Context) -> float:
    # net, never the compiled module: evaluation runs eager under every --compile-mode (no CUDA graph,
    # no recompile for eval mode and no_grad), and HyperConnection records last_h_res, which mhc_health
    # reads, only in an eager forward.
    net.eval()
    total = 0.0
    with _autocast(cfg, ctx):
        for x, y in batches:
            total += loss_fn(net(x.to(ctx.device)), y.to(ctx.device)).item()
    net.train()
    # Every rank holds the same number of rows per batch: the global mean is the mean of rank means.
    (total,) = _all_sum([total], ctx)
    return total / (len(batches) * ctx.world)


def _sync(ctx: Context) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


class StopRequest:
    """Ctrl-C as a request: while active, SIGINT sets ``requested`` and the loop stops at the next step
    boundary, so the checkpoint it then writes is a consistent state (an exception raised inside
    opt.step() would leave some parameters updated and others not). A second Ctrl-C raises
    KeyboardInterrupt at once (the previous handler is back). Active only in a single-process run on
    the main thread: under torchrun, Ctrl-C is torchrun's, which stops every rank."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class Interval:
    """Sums over the training steps since the last evaluation (this rank's)."""

    loss: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0
    time: float = 0.0


def _full_state(net: GPT, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The model's and the optimizer's full state dicts (every rank must call: FSDP gathers its
    shards; rank 0 gets them on CPU)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(net, options=options), get_optimizer_state_dict(net, opt, options=options)


def _grad_norm(total: torch.Tensor) -> float:
    # FSDP2's parameters are DTensors, and so is clip_grad_norm_'s total norm.
    return (total.full_tensor() if hasattr(total, "full_tensor") else total).item()


def train(cfg: TrainConfig, corpus: data_mod.Corpus, ctx: Context, resume: dict | None = None) -> dict:
    """Trains from step 0, or from a checkpoint (``resume``: checkpoint.load's dict) to cfg.steps;
    writes DIR/config.json, DIR/metrics.jsonl, DIR/checkpoint.pt (every evaluation), DIR/summary.json
    and DIR/loss.png on rank 0. Stops early, with a checkpoint of the last step, on Ctrl-C
    (StopRequest). -> the summary (every rank returns it; ``interrupted`` says whether it stopped early)."""
    start = time.perf_counter()
    out = pathlib.Path(cfg.out)
    cuda = ctx.device.type == "cuda"
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (FSDP shards each rank's copy)
    net = GPT(cfg.model_config()).to(ctx.device)
    if resume is not None:
        net.load_state_dict(resume["model"])  # before wrap: FSDP shards the loaded values
    n_params = sum(p.numel() for p in net.parameters())
    n_mhc = sum(p.numel() for hc in hyper_connections(net) for p in hc.parameters(recurse=False))
    model = wrap(net, cfg, ctx)
    if cfg.compile:
        model = torch.compile(model, mode=cfg.compile_mode)
    # reduce-overhead: CUDA graph trees replay the forward and backward; the outputs of one replay live
    # in the graphs' memory pool and are overwritten by the next, so each step is marked as a new one.
    graphs = cfg.compile and cfg.compile_mode == "reduce-overhead"
    opt = make_optimizer(net, cfg)
    sched = make_scheduler(opt, cfg)
    first, history, interval = 0, [], Interval()
    if resume is not None:
        set_optimizer_state_dict(net, opt, resume["optimizer"], options=StateDictOptions(full_state_dict=True))
        sched.load_state_dict(resume["scheduler"])
        checkpoint.set_rng_state(resume["rng"], cuda)
        first, history, interval = resume["step"], list(resume["history"]), Interval(**resume["interval"])
    val = data_mod.val_batches(
        corpus, count=cfg.eval_batches, batch=cfg.batch, seq=cfg.seq, rank=ctx.rank, world=ctx.world
    )

    mem_source = peak_memory(ctx.device)[1]
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        info = {
            **dataclasses.asdict(cfg),
            "world_size": ctx.world,
            "params": n_params,
            "mhc_params": n_mhc,
            "corpus": corpus.describe(),
            "peak_mem_source": mem_source,
            "torch": torch.__version__,
            "resumed_from_step": resume["step"] if resume is not None else None,
        }
        checkpoint.write_text(out / "config.json", json.dumps(info, indent=2) + "\n")
        # A resumed run's metrics are the checkpoint's history: records a killed run logged after its
        # last checkpoint are dropped, and the resumed run logs those steps again.
        checkpoint.write_jsonl(out / "metrics.jsonl", history)

    def save_checkpoint(done: int) -> None:
        # After the optimizer's first step only: on an optimizer without state,
        # get_optimizer_state_dict initialises it with a step of lr 0, which counts as AdamW's step 1.
        model_state, optim_state = _full_state(net, opt)
        if ctx.main:
            payload = {
                "format": checkpoint.FORMAT,
                "step": done,
                "config": dataclasses.asdict(cfg),
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": sched.state_dict(),
                "rng": checkpoint.rng_state(cuda),
                "data": {"seed": cfg.seed, "next_step": done},
                "interval": dataclasses.asdict(interval),
                "history": history,
                "corpus": corpus.describe(),
            }
            checkpoint.save(out / checkpoint.NAME, payload)

    def evaluation(step: int, lr: float | None, tokens_per_s: float | None) -> dict:
        nonlocal interval
        train_loss = grad_norm = None
        if interval.steps:
            loss_sum, norm_sum, steps_all = _all_sum([interval.loss, interval.grad_norm, interval.steps], ctx)
            train_loss, grad_norm = loss_sum / steps_all, norm_sum / steps_all
        record = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": evaluate(net, val, cfg, ctx),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "peak_mem_bytes": peak_memory(ctx.device)[0],
            **mhc_health(net),
        }
        history.append(record)
        if ctx.main:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        interval = Interval()  # the next one starts empty
        if step > 0:  # (at step 0 the optimizer has no state yet, and nothing is lost without one)
            save_checkpoint(step)
        return record

    # The summary's throughput leaves out this process's first step when there are others: it holds
    # torch.compile's compilation, Triton's autotuning and the allocator's warm-up.
    steady_time, steady_steps, done, lr = 0.0, 0, first, None
    bar = tqdm(
        range(first, cfg.steps),
        initial=first,
        total=cfg.steps,
        desc=cfg.residual + (f" n={cfg.n}" if cfg.residual == "mhc" else ""),
        unit="step",
        disable=not ctx.main,
        dynamic_ncols=True,
    )
    with StopRequest(enabled=cfg.dist == "none") as stop:
        if resume is None:
            evaluation(0, None, None)  # the untrained model: val loss ≈ ln(256) = 5.55
        for step in bar:
            if stop.requested:
                break
            x, y = data_mod.train_batch(
                corpus, step, seed=cfg.seed, batch=cfg.batch, seq=cfg.seq, rank=ctx.rank, world=ctx.world
            )
            x, y = x.to(ctx.device), y.to(ctx.device)
            lr = opt.param_groups[0]["lr"]  # this step's, set by the scheduler's previous step
            _sync(ctx)
            t0 = time.perf_counter()
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with _autocast(cfg, ctx):
                loss = loss_fn(model(x), y)  # the logits (a graph output under reduce-overhead) die in this step
            # None, not zeros: under reduce-overhead the gradients are the backward graph's outputs, and
            # accumulating into the previous step's would touch memory the next replay overwrites.
            opt.zero_grad(set_to_none=True)
            loss.backward()
            total_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)  # before clipping
            opt.step()
            sched.step()
            # The step's one host sync: it synchronises the device, so the interval below is the step's
            # time, and it copies the loss out before the next step's graphs run. The norm is then ready.
            local_loss = loss.item()
            dt = time.perf_counter() - t0
            interval.loss += local_loss
            interval.grad_norm += _grad_norm(total_norm)
            interval.steps += 1
            interval.time += dt
            if step > first or cfg.steps - first == 1:
                steady_time += dt
                steady_steps += 1
            bar.set_postfix(loss=f"{local_loss:.3f}", tok_s=f"{cfg.batch * cfg.seq / dt:,.0f}", refresh=False)

            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                steps_here = interval.steps  # this rank's; every rank runs the same steps
                record = evaluation(done, lr, steps_here * cfg.batch * cfg.seq / interval.time)
                if ctx.main:
                    bar.write(
                        f"step {done:>6}  train {record['train_loss']:.4f}  val {record['val_loss']:.4f}  "
                        f"lr {record['lr']:.2e}  grad norm {record['grad_norm']:.3f}  "
                        f"{record['tokens_per_s']:,.0f} tok/s"
                    )
            elif stop.requested:
                save_checkpoint(done)  # the state after this step; the interval's sums go with it
    bar.close()

    last = history[-1]
    summary = {
        "steps_done": done,
        "steps": cfg.steps,
        "interrupted": done < cfg.steps,
        "resumed_from_step": resume["step"] if resume is not None else None,
        "last_eval_step": last["step"],
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "tokens_per_s": steady_steps * cfg.batch * cfg.seq / steady_time if steady_steps else None,
        "peak_mem_bytes": peak_memory(ctx.device)[0],
        "peak_mem_source": mem_source,
        "wall_s": time.perf_counter() - start,
        "sinkhorn_max_dev": last["sinkhorn_max_dev"],
        "h_res_gain": last["h_res_gain"],
    }
    if ctx.main:
        checkpoint.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_runs([out], out / "loss.png")
    return summary
