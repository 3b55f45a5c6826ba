"""Training steps of a small transformers DeepSeek-V4, eager against mhc_ops.integrations.apply_to_deepseek_v4.

    PYTHONPATH=. python -m benchmarks.hf_deepseek_v4 [--layers 4] [--hidden 1024] [--hc-mult 4] [--seq 1024]
        [--batch 1] [--rounds 9] [--steps 5] [--variants eager,mhc_ops,mhc_ops.no_head] [--out benchmarks/results]
    PYTHONPATH=. python -m benchmarks.hf_deepseek_v4 --toy    # the CPU smoke test: a tiny model, a few steps

One randomly initialised model (no download) in the model dtype (bf16 on CUDA), with the modules HF keeps
in fp32 when it loads a checkpoint (``_keep_in_fp32_modules_strict``: the HC modules, the norms, the
sinks) in fp32. A variant is the same model with a patch applied to it (``apply_to_deepseek_v4(model)``)
or none; a training step is forward, backward and an AdamW step on a fixed batch. The AdamW learning
rate is 0: the step does all its work but leaves the weights as they are, so every round of every
variant runs the same model, MoE routing included.

Each round runs every variant once, in an order rotated from round to round, for --steps timed steps
after one untimed one; a variant's tokens/s is the median over rounds, its speed-up over eager the
median over rounds of the ratio within a round. Memory (CUDA): the peak allocated during a round's
steps, and the part of it above what was allocated before them (the step's activations, gradients and
temporaries; weights and optimizer state are the same for all). Before the rounds, each variant's loss
on the batch is compared with eager's (in bf16 they differ by rounding: HF mixes the streams with bf16
coefficients, mhc_post with fp32 ones). bf16 needs transformers 5.23: in 5.17 HF's own bf16 model with
fp32 norms fails (docs/integrations.md).

Output: a markdown table on stdout; one JSON object per variant appended to
OUT/<gpu>-<date>-hf-deepseek-v4.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import statistics
import sys
import time

import torch
import triton

from mhc_ops.integrations import apply_to_deepseek_v4, revert_deepseek_v4

# variant -> apply_to_deepseek_v4 flags, None for no patch
VARIANTS = {
    "eager": None,
    "mhc_ops": {"hyper_connection": True, "hyper_head": True},
    "mhc_ops.no_head": {"hyper_connection": True, "hyper_head": False},
}
BASELINE = "eager"

ROW_KEYS = (
    "bench", "variant", "layers", "hidden", "hc_mult", "seq", "batch", "vocab", "experts", "dtype", "tokens_per_s",
    "tokens_per_s_rounds", "step_ms", "speedup_vs_eager", "peak_mem_bytes", "step_mem_bytes", "step_mem_vs_eager",
    "loss", "loss_rel_diff_vs_eager", "rounds", "steps", "gpu", "device_name", "date", "run", "torch", "triton",
    "transformers", "toy",
)  # fmt: skip


def model_config(layers: int, hidden: int, hc_mult: int, seq: int, vocab: int, experts: int, toy: bool):
    """A DeepSeek-V4 config at the given size. The attention (head_dim 128, one KV head, grouped output)
    and MoE (experts of width hidden, 2 routed per token + 1 shared) are scaled-down V4 blocks with
    HF's default layer schedule (compressed attention, hash-routed MoE first); --toy is the test suite's
    2-layer, hidden-32 model."""
    from transformers import DeepseekV4Config

    if toy:
        return DeepseekV4Config(
            vocab_size=vocab, hidden_size=hidden, moe_intermediate_size=16, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, q_lora_rank=16, num_experts_per_tok=2,
            n_routed_experts=experts, n_shared_experts=1, hc_mult=hc_mult, sliding_window=8, o_groups=2,
            o_lora_rank=8, index_n_heads=2, index_head_dim=8, index_topk=4, max_position_embeddings=4 * seq,
            layer_types=["sliding_attention", "compressed_sparse_attention"], mlp_layer_types=["hash_moe", "moe"],
        )  # fmt: skip
    heads = max(1, hidden // 128)
    return DeepseekV4Config(
        vocab_size=vocab, hidden_size=hidden, moe_intermediate_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=1, head_dim=128, q_lora_rank=hidden // 2,
        num_experts_per_tok=2, n_routed_experts=experts, n_shared_experts=1, hc_mult=hc_mult,
        o_groups=min(heads, 4), o_lora_rank=hidden // 4, index_n_heads=8, index_head_dim=64,
        index_topk=min(128, seq // 4), max_position_embeddings=4 * seq,
    )  # fmt: skip


def cast_as_loaded(model, dtype: torch.dtype):
    """Every floating-point parameter and buffer to dtype except those of the modules HF keeps in fp32
    (``_keep_in_fp32_modules_strict``), as from_pretrained(dtype=...) leaves a DeepSeek-V4. In place."""
    keep = set(model._keep_in_fp32_modules_strict or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not keep & set(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model


def build_model(config, device: torch.device, dtype: torch.dtype, seed: int):
    """The model on device, cast as loaded. The hash-routed layers' tid2eid table, zero at init (every
    token to expert 0), is made random."""
    from transformers import DeepseekV4ForCausalLM

    torch.manual_seed(seed)
    model = cast_as_loaded(DeepseekV4ForCausalLM(config).to(device), dtype)
    for name, buffer in model.named_buffers():
        if name.endswith("tid2eid"):
            k = buffer.shape[1]
            buffer.copy_(torch.stack([torch.randperm(config.n_routed_experts)[:k] for _ in range(buffer.shape[0])]))
    return model.train()


def set_variant(model, variant: str) -> None:
    revert_deepseek_v4(model)
    if VARIANTS[variant] is not None:
        apply_to_deepseek_v4(model, **VARIANTS[variant])


def train_step(model, optimizer, ids) -> torch.Tensor:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_round(model, optimizer, ids, steps: int, device: torch.device) -> dict:
    """One untimed step, then `steps` timed ones: seconds per step and (CUDA) memory."""
    train_step(model, optimizer, ids)
    sync(device)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, ids)
    sync(device)
    out = {"s_per_step": (time.perf_counter() - start) / steps}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out |= {"peak_mem_bytes": peak, "step_mem_bytes": peak - before}
    return out


def run(args) -> list[dict]:
    import transformers

    from .run import gpu_tag  # here, not at the top: benchmarks.run imports matplotlib (its plots)

    device = args.device
    config = model_config(args.layers, args.hidden, args.hc_mult, args.seq, args.vocab, args.experts, args.toy)
    model = build_model(config, device, args.dtype, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(device)

    losses = {}
    for variant in args.variants:
        set_variant(model, variant)
        with torch.no_grad():
            losses[variant] = model(input_ids=ids, labels=ids).loss.float().item()
    rounds: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        order = args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
        print(f"round {r + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
        for variant in order:
            set_variant(model, variant)
            rounds[variant].append(measure_round(model, optimizer, ids, args.steps, device))
    revert_deepseek_v4(model)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    now = dt.datetime.now()
    tokens = args.batch * args.seq
    base = {
        "bench": "hf_deepseek_v4", "layers": args.layers, "hidden": args.hidden, "hc_mult": args.hc_mult,
        "seq": args.seq, "batch": args.batch, "vocab": args.vocab, "experts": args.experts,
        "dtype": str(args.dtype).removeprefix("torch."), "rounds": args.rounds, "steps": args.steps,
        "gpu": gpu_tag(device_name), "device_name": device_name, "date": now.date().isoformat(),
        "run": now.isoformat(timespec="seconds"), "torch": torch.__version__, "triton": triton.__version__,
        "transformers": transformers.__version__, "toy": args.toy,
    }  # fmt: skip
    rows = []
    for variant, measured in rounds.items():
        per_round = [tokens / m["s_per_step"] for m in measured]
        row = dict.fromkeys(ROW_KEYS) | base | {"variant": variant, "loss": losses[variant]}
        row |= {"tokens_per_s": statistics.median(per_round), "tokens_per_s_rounds": per_round}
        row["step_ms"] = 1e3 * tokens / row["tokens_per_s"]
        if device.type == "cuda":
            row["peak_mem_bytes"] = max(m["peak_mem_bytes"] for m in measured)
            row["step_mem_bytes"] = statistics.median(m["step_mem_bytes"] for m in measured)
        rows.append(row)
    ref = next((r for r in rows if r["variant"] == BASELINE), None)
    for row in rows if ref is not None else ():
        # Paired by round (the variants of a round ran back to back): robust to drift between rounds.
        ratios = [a / b for a, b in zip(row["tokens_per_s_rounds"], ref["tokens_per_s_rounds"])]
        row["speedup_vs_eager"] = statistics.median(ratios)
        row["loss_rel_diff_vs_eager"] = abs(row["loss"] - ref["loss"]) / abs(ref["loss"])
        if ref["step_mem_bytes"]:
            row["step_mem_vs_eager"] = row["step_mem_bytes"] / ref["step_mem_bytes"]
    return rows


TABLE_COLUMNS = (
    "variant", "tokens_per_s", "step_ms", "speedup_vs_eager", "peak_mem_bytes", "step_mem_bytes",
    "step_mem_vs_eager", "loss", "loss_rel_diff_vs_eager",
)  # fmt: skip
NUMBER_FORMAT = {
    "tokens_per_s": ".0f", "step_ms": ".2f", "speedup_vs_eager": ".3f", "step_mem_vs_eager": ".3f",
    "loss": ".6f", "loss_rel_diff_vs_eager": ".2e",
}  # fmt: skip


def format_table(rows: list[dict]) -> str:
    def cell(row, key):
        value = row[key]
        if value is None:
            return "-"
        if key.endswith("_bytes"):
            return f"{value / 2**20:.0f} MiB"
        return format(value, NUMBER_FORMAT[key]) if key in NUMBER_FORMAT else str(value)

    r = rows[0]
    title = (
        f"DeepSeek-V4 ({r['layers']} layers, hidden {r['hidden']}, hc_mult {r['hc_mult']}, {r['batch']}x{r['seq']} "
        f"tokens, {r['dtype']}, HC fp32) on {r['device_name']}, median of {r['rounds']} rounds of {r['steps']} steps"
    )
    lines = [title, "", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row, k) for k in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_jsonl(rows: list[dict], out: pathlib.Path) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{rows[0]['gpu']}-{rows[0]['date']}-hf-deepseek-v4.jsonl"
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in ROW_KEYS}) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf_deepseek_v4", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--hc-mult", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--experts", type=int, default=8, help="routed experts per MoE layer")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per variant and round")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    p.add_argument("--toy", action="store_true", help="CPU smoke test: 2 layers, hidden 32, seq 16, 2 rounds of 1 step")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="results folder")
    args = p.parse_args(argv)
    if args.toy:
        args.layers, args.hidden, args.seq, args.vocab, args.experts, args.rounds, args.steps = 2, 32, 16, 64, 4, 2, 1
    args.variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    if not args.variants or set(args.variants) - set(VARIANTS):
        p.error(f"--variants: expected a comma-separated subset of {', '.join(VARIANTS)}")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (--toy runs the CPU smoke test)")
    default_dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    args.dtype = getattr(torch, args.dtype or default_dtype)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run, print the table, append the JSON lines; returns the rows."""
    args = parse_args(argv)
    rows = run(args)
    print(format_table(rows))
    print(f"\nappended {len(rows)} rows to {write_jsonl(rows, args.out)}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
