"""Decode steps of small transformers DeepSeek-V4 and GLM-5-Next models (benchmarks/hf_models.py's, in eval
mode): HF's eager hyper-connections, the model patched by mhc_ops.integrations, and the trivial mix, one token a
step on a KV cache.

    PYTHONPATH=. python -m benchmarks.hf_decode [--models deepseek_v4,glm5_next] [--layers 4] [--hidden 4096]
        [--hc-mult 4] [--experts 4] [--batch 1] [--prompt 32] [--steps 32] [--rounds 5]
        [--variants eager,mhc_ops,trivial,eager.compile,mhc_ops.compile] [--out benchmarks/results]
    PYTHONPATH=. python -m benchmarks.hf_decode --toy    # the CPU smoke test: tiny models, a few steps

Per family one randomly initialised model (bf16 on CUDA, HF's fp32 modules kept fp32; hf_models.build_model),
in eval mode under torch.no_grad. Each variant prefills the same --prompt tokens into a fresh cache, then decodes
--steps fixed random tokens one at a time (teacher-forced: every variant sees the same sequence, so their logits
compare). Patched, a prefill of at most 64 tokens and every step run each boundary between blocks as one
(mhc_ops.integrations.deepseek_v4.layer_output; the prefill teaches each layer its successor). A round times each
variant's decode steps, wall clock between two synchronisations: eager decode is host-bound, so this is the host's
time plus what the GPU does not hide, as a user's generate loop pays it. ms_per_token: the median over rounds
(rounds in an order rotated from round to round, after one untimed round each: a ".compile" variant, each
decoder layer under torch.compile as in hf_models, compiles there); ms_above_trivial: the median of
the step time less the trivial variant's, the hyper-connections' cost. launches_per_token: the kernels one decode
step launches (torch.profiler, CUDA). logits_rel_diff_vs_eager: the last step's logits against eager's
(in bf16 the variants round differently: hf_models' docstring).

Output: a markdown table per family on stdout; one JSON object per variant appended to
OUT/<gpu>-<date>-hf-decode.jsonl.
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

from .hf_models import FAMILIES, build_model, describe_failure, sync, variant_model
from .hf_models import VARIANTS as MODEL_VARIANTS
from .report import gpu_tag

VARIANTS = ("eager", "mhc_ops", "trivial")  # the default; --variants takes any of hf_models' (".compile" ones too)
BASELINE, FLOOR = "eager", "trivial"
SEQ = 1024  # the configs' sequence length (hf_models': their index_topk and positions), at least prompt + steps


def decode(model, prompt: torch.Tensor, tokens: torch.Tensor, device: torch.device) -> tuple[float, torch.Tensor]:
    """Prefill prompt [B, P] into a fresh cache, then decode tokens [B, S] one at a time -> (ms a decode step,
    the last step's logits [B, vocab] fp32)."""
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).past_key_values
        sync(device)
        start = time.perf_counter()
        for k in range(tokens.shape[1]):
            out = model(input_ids=tokens[:, k : k + 1], past_key_values=cache, use_cache=True)
        sync(device)
    return (time.perf_counter() - start) * 1e3 / tokens.shape[1], out.logits[:, -1].float()


def launches_per_step(model, prompt: torch.Tensor, tokens: torch.Tensor) -> int:
    """CUDA kernels of one decode step after a prefill (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).past_key_values
        model(input_ids=tokens[:, :1], past_key_values=cache, use_cache=True)  # the first step learns links
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(input_ids=tokens[:, 1:2], past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
    return sum(e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower()
               for e in prof.events())  # fmt: skip


def run_family(args, family) -> list[dict]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = family.config(args.layers, args.hidden, args.hc_mult, max(SEQ, args.prompt + args.steps), args.vocab,
                           args.experts, args.toy)  # fmt: skip
    model = build_model(family, config, device, dtype, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, args.vocab, (args.batch, args.prompt), generator=g).to(device)
    tokens = torch.randint(1, args.vocab, (args.batch, args.steps), generator=g).to(device)
    models, errors, logits = {}, {}, {}
    for name in args.variants:
        try:
            models[name] = variant_model(model, family, name, "layers", "inductor", None).eval()
            _, logits[name] = decode(models[name], prompt, tokens, device)  # untimed: compiles, warms
        except Exception as e:  # noqa: BLE001  (a variant that fails is a row, the others run on)
            errors[name] = f"first round: {describe_failure(e)}"
            models.pop(name, None)
            print(f"{family.key} {name} failed ({errors[name]})", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        print(f"{family.key} round {r + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr)
        for name in order:
            times[name].append(decode(models[name], prompt, tokens, device)[0])
    rows = []
    for name in args.variants:
        row = {"family": family.key, "variant": name, "layers": args.layers if not args.toy else None,
               "hidden": config.get_text_config().hidden_size, "hc_mult": args.hc_mult, "batch": args.batch,
               "prompt": args.prompt, "steps": args.steps, "dtype": str(dtype).removeprefix("torch."),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}  # fmt: skip
        if name in errors:
            rows.append(row | {"error": errors[name]})
            continue
        row["ms_per_token"] = statistics.median(times[name])
        row["ms_rounds"] = [round(t, 4) for t in times[name]]
        if FLOOR in times:
            row["ms_above_trivial"] = statistics.median(a - b for a, b in zip(times[name], times[FLOOR]))
        if BASELINE in logits:
            ref = logits[BASELINE]
            row["logits_rel_diff_vs_eager"] = float((logits[name] - ref).norm() / ref.norm().clamp_min(1e-30))
        if device.type == "cuda":
            row["launches_per_token"] = launches_per_step(models[name], prompt, tokens)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = rows[0]
    lines = [f"{head['family']}: hidden {head['hidden']}, hc_mult {head['hc_mult']}, batch {head['batch']}, "
             f"{head['prompt']}-token prompt, {head['steps']} decode steps, {head['dtype']} on {head['device']}",
             "", "| variant | ms_per_token | ms_above_trivial | launches_per_token | logits_rel_diff_vs_eager | error |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        cells = [row["variant"], _num(row.get("ms_per_token")), _num(row.get("ms_above_trivial")),
                 row.get("launches_per_token", "-"), _num(row.get("logits_rel_diff_vs_eager"), ".2e"),
                 row.get("error", "-")]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _num(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf_decode", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(FAMILIES), help=f"comma-separated subset of {', '.join(FAMILIES)}")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--hc-mult", type=int, default=4)
    p.add_argument("--experts", type=int, default=4, help="routed experts per MoE layer")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=32, help="prefill tokens")
    p.add_argument("--steps", type=int, default=32, help="decode steps a round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {', '.join(MODEL_VARIANTS)} (default {','.join(VARIANTS)})")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    p.add_argument("--toy", action="store_true", help="tiny models (the tests'), a few steps: the CPU smoke test")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="results folder")
    args = p.parse_args(argv)
    for flag, value, known in (("--models", args.models, FAMILIES), ("--variants", args.variants, MODEL_VARIANTS)):
        chosen = [v for v in value.split(",") if v]
        unknown = [v for v in chosen if v not in known]
        if unknown or not chosen:
            p.error(f"{flag}: expected a comma-separated subset of {', '.join(known)}, got {value!r}")
    args.models = [v for v in args.models.split(",") if v]
    args.variants = [v for v in args.variants.split(",") if v]
    for flag in ("layers", "hidden", "hc_mult", "experts", "vocab", "batch", "prompt", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if args.steps < 2:  # the first step's kernels differ (the layers learn their successors): the second is counted
        p.error(f"--steps: expected at least 2, got {args.steps}")
    if args.toy:
        args.prompt, args.steps, args.rounds, args.vocab = min(args.prompt, 6), min(args.steps, 3), 1, 64
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device: {args.device} asked for, but no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    tag = gpu_tag(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{tag}-{dt.date.today().isoformat()}-hf-decode.jsonl"
    rows = []
    for key in args.models:
        family_rows = run_family(args, FAMILIES[key])
        print(format_table(family_rows) + "\n", flush=True)
        with path.open("a") as fh:  # family by family: a run cut short keeps what it measured
            for row in family_rows:
                fh.write(json.dumps(row) + "\n")
        rows += family_rows
    print(f"appended {len(rows)} rows to {path}")
    return rows


if __name__ == "__main__":
    main()
