"""The training loop: one process or data-parallel (DDP / FSDP2), evaluation, metrics and summary.

Data parallelism splits each global batch of ``batch`` rows over the ranks (``data.train_batch``), so N
processes compute the same mean loss and gradient as one process, up to the order of fp32 sums.
Evaluation is sharded the same way (every rank evaluates its rows of the same validation batches and
the sums are all-reduced: FSDP needs every rank in each forward anyway); rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import resource
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data as data_mod
from .model import GPT, ModelConfig, branch_modules, hyper_connections, loss_fn, mhc_health
from .plot import plot_runs


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
    device: str
    eval_every: int
    eval_batches: int
    dist: str
    dtype: str  # "fp32" | "bf16": bf16 is autocast (none/ddp) or FSDP's param_dtype, the mHC parameters stay fp32
    warmup: int
    weight_decay: float
    grad_clip: float

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
        )


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(cfg: TrainConfig) -> Context:
    """Joins the process group under torchrun (NCCL on CUDA with device LOCAL_RANK, gloo on CPU)."""
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
    return Context(dist.get_rank(), dist.get_world_size(), device)


def teardown(cfg: TrainConfig, finished: bool) -> None:
    """Leaves the process group. After a finished run every rank first waits for the others, so no rank
    destroys the group while a peer still talks to it (gloo aborts that peer; the CPU fsdp test saw a
    SIGABRT once under load, not reproduced in six reruns). After a failure no barrier: the peers may
    wait in a collective the failed rank never joins, and torchrun stops them."""
    if cfg.dist != "none" and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over cfg.warmup steps, then cosine decay to a tenth of cfg.lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


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


def train(cfg: TrainConfig, corpus: data_mod.Corpus, ctx: Context) -> dict:
    """Trains, writes DIR/config.json, DIR/metrics.jsonl, DIR/summary.json and DIR/loss.png on rank 0,
    -> the summary (every rank returns it)."""
    start = time.perf_counter()
    out = pathlib.Path(cfg.out)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (FSDP shards each rank's copy)
    net = GPT(cfg.model_config()).to(ctx.device)
    n_params = sum(p.numel() for p in net.parameters())
    n_mhc = sum(p.numel() for hc in hyper_connections(net) for p in hc.parameters(recurse=False))
    model = wrap(net, cfg, ctx)
    if cfg.compile:
        model = torch.compile(model, mode=cfg.compile_mode)
    # reduce-overhead: CUDA graph trees replay the forward and backward; the outputs of one replay live
    # in the graphs' memory pool and are overwritten by the next, so each step is marked as a new one.
    graphs = cfg.compile and cfg.compile_mode == "reduce-overhead"
    opt = make_optimizer(net, cfg)
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
        }
        (out / "config.json").write_text(json.dumps(info, indent=2) + "\n")
        (out / "metrics.jsonl").write_text("")

    history = []

    def evaluation(step: int, train_loss: float | None, tokens_per_s: float | None) -> dict:
        record = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": evaluate(net, val, cfg, ctx),
            "tokens_per_s": tokens_per_s,
            "peak_mem_bytes": peak_memory(ctx.device)[0],
            **mhc_health(net),
        }
        history.append(record)
        if ctx.main:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    evaluation(0, None, None)  # the untrained model: val loss ≈ ln(256) = 5.55
    # The summary's throughput leaves out step 0 when there are others: it holds torch.compile's
    # compilation, Triton's autotuning and the allocator's warm-up.
    steady_time, interval_time, interval_loss, interval_steps = 0.0, 0.0, 0.0, 0
    bar = tqdm(
        range(cfg.steps),
        desc=cfg.residual + (f" n={cfg.n}" if cfg.residual == "mhc" else ""),
        unit="step",
        disable=not ctx.main,
        dynamic_ncols=True,
    )
    for step in bar:
        x, y = data_mod.train_batch(
            corpus, step, seed=cfg.seed, batch=cfg.batch, seq=cfg.seq, rank=ctx.rank, world=ctx.world
        )
        x, y = x.to(ctx.device), y.to(ctx.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
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
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        # The step's one host sync, as before: it synchronises the device, so the interval below is the
        # step's time, and it copies the loss out before the next step's graphs run.
        local_loss = loss.item()
        dt = time.perf_counter() - t0
        if step > 0 or cfg.steps == 1:
            steady_time += dt
        interval_time += dt
        interval_loss += local_loss
        interval_steps += 1
        bar.set_postfix(loss=f"{local_loss:.3f}", tok_s=f"{cfg.batch * cfg.seq / dt:,.0f}", refresh=False)

        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            train_loss, steps_all = _all_sum([interval_loss, interval_steps], ctx)
            record = evaluation(done, train_loss / steps_all, interval_steps * cfg.batch * cfg.seq / interval_time)
            if ctx.main:
                bar.write(
                    f"step {done:>6}  train {record['train_loss']:.4f}  val {record['val_loss']:.4f}  "
                    f"{record['tokens_per_s']:,.0f} tok/s"
                )
            interval_time, interval_loss, interval_steps = 0.0, 0.0, 0
    bar.close()

    last = history[-1]
    summary = {
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "tokens_per_s": max(1, cfg.steps - 1) * cfg.batch * cfg.seq / steady_time,
        "peak_mem_bytes": peak_memory(ctx.device)[0],
        "peak_mem_source": mem_source,
        "wall_s": time.perf_counter() - start,
        "sinkhorn_max_dev": last["sinkhorn_max_dev"],
        "h_res_gain": last["h_res_gain"],
    }
    if ctx.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_runs([out], out / "loss.png")
    return summary
