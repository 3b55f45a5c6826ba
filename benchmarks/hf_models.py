"""Training steps of small transformers DeepSeek-V4 and GLM-5-Next models: HF's eager hyper-connections,
the same model patched by mhc_ops.integrations, and the model with its hyper-connections replaced by a
trivial mix (what the rest of the model costs).

    PYTHONPATH=. python -m benchmarks.hf_models [--models deepseek_v4,glm5_next] [--layers 4] [--hidden 1024]
        [--hc-mult 4] [--seq 1024] [--batch 1] [--rounds 9] [--steps 5] [--variants eager,mhc_ops,trivial]
        [--out benchmarks/results]
    PYTHONPATH=. python -m benchmarks.hf_models --variants eager,mhc_ops,eager.compile,mhc_ops.compile
        [--compile-scope layers|model] [--compile-backend inductor] [--compile-mode MODE] [--no-cache]
    PYTHONPATH=. python -m benchmarks.hf_models --toy    # the CPU smoke test: tiny models, a few steps

Per model family, one randomly initialised model (no download) in the model dtype (bf16 on CUDA), the
parameters HF keeps in fp32 when it loads a checkpoint (``_keep_in_fp32_modules_strict``) in fp32. A
variant is that model as it is (``eager``) or a second module tree over the same parameter and buffer
tensors (the same weights, gradients and optimizer), patched once:

- ``mhc_ops``: ``apply_to_<family>(model)``; ``mhc_ops.no_head``: DeepSeek-V4 without its head.
- ``trivial``: the patched decoder layers with hyper-connections that mix trivially: the block's input
  is the mean of the streams and its output is added to every stream; DeepSeek-V4's head is the mean
  too (GLM-5-Next's is already). No HC parameter is used: the model's cost without mHC, n streams kept.
- ``.compile``: the same under torch.compile, each decoder layer (``--compile-scope model``: the whole
  model), fullgraph off. A variant that fails (to compile, or later) is recorded in its row, ``error``:
  the exception's type and first line and where it was raised; the others run on.

A training step is forward, backward and an AdamW step on a fixed batch, learning rate 0: the step does
all its work but leaves the weights as they are, so every round of every variant runs the same model,
MoE routing included. Before the rounds, each variant takes one untimed step (for a compiled variant:
the compile; its seconds are ``compile_s``, its Dynamo graphs and graph breaks ``dynamo_graphs``,
``graph_breaks``) whose loss is compared with eager's (in bf16 they differ by rounding: HF mixes the
streams with bf16 coefficients, mhc_post with fp32 ones; the trivial mix is another model). Each round
runs every variant of a family once, in an order rotated from round to round, for --steps timed steps
after --warmup untimed ones (at least 2 for a compiled variant); a variant's tokens/s is the median over
rounds, its speed-up over eager the median over rounds of the ratio within a round, ``ms_above_trivial``
the median over rounds of its step time minus the trivial variant's. Memory (CUDA): the peak allocated
during a round's steps, and the part of it above what was allocated before them (the step's
activations, gradients and temporaries; weights and optimizer state are the same for all). bf16 needs
transformers 5.20 or later for DeepSeek-V4: before, HF's own bf16 model with fp32 norms fails
(docs/integrations.md).

Output: a markdown table per family on stdout; one JSON object per variant appended to
OUT/<gpu>-<date>-hf-models.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import itertools
import json
import pathlib
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch
import triton

from mhc_ops.integrations import apply_to_deepseek_v4, apply_to_glm5_next

from .report import gpu_tag


@dataclasses.dataclass(frozen=True)
class Variant:
    patch: str | None  # None: HF's code; "mhc_ops": the integration; "trivial": the trivial mix
    flags: tuple = ()  # apply_to_deepseek_v4's flags (key, value)
    compiled: bool = False  # under torch.compile (--compile-scope, --compile-backend, --compile-mode)
    only: tuple[str, ...] | None = None  # the model families it applies to (None: all)


VARIANTS = {
    "eager": Variant(None),
    "mhc_ops": Variant("mhc_ops"),
    "mhc_ops.no_head": Variant("mhc_ops", (("hyper_head", False),), only=("deepseek_v4",)),
    "trivial": Variant("trivial"),
    "eager.compile": Variant(None, compiled=True),
    "mhc_ops.compile": Variant("mhc_ops", compiled=True),
}
DEFAULT_VARIANTS = ("eager", "mhc_ops", "trivial")
BASELINE, FLOOR = "eager", "trivial"
COMPILED_WARMUP = 2  # untimed steps per round, at least, for a compiled variant


# ---- the two model families ------------------------------------------------------------------------------


def deepseek_v4_config(layers: int, hidden: int, hc_mult: int, seq: int, vocab: int, experts: int, toy: bool):
    """The attention (head_dim 128, one KV head, grouped output) and MoE (experts of width hidden, 2 routed
    per token + 1 shared) are scaled-down V4 blocks with HF's default layer schedule (compressed
    attention, hash-routed MoE first). toy: 2 layers, hidden 32: one sliding-window and one
    compressed-sparse attention, one hash-routed and one top-k MoE (the tests' model)."""
    from transformers import DeepseekV4Config

    if toy:
        return DeepseekV4Config(
            vocab_size=vocab, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=2,
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


def glm5_next_config(layers: int, hidden: int, hc_mult: int, seq: int, vocab: int, experts: int, toy: bool):
    """GLM-5-Next's text model scaled down (MLA attention of heads of 128, linear attention heads of 128,
    experts of width hidden, 2 routed + 1 shared) with HF's default schedule (three linear-attention
    layers per indexed one; dense MLPs in the first three layers, MoE after), and a one-block vision
    tower (unused: text only). toy: 3 layers, hidden 32: linear, indexed and indexed attention (the last
    reusing the second's top-k), dense then MoE (the tests' model)."""
    from transformers import Glm5NextConfig

    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=32 if toy else hidden,
                  projection_intermediate_size=32, patch_size=2, image_size=8)  # fmt: skip
    if toy:
        text = dict(
            vocab_size=vocab, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2, n_routed_experts=experts, num_experts_per_tok=2,
            n_shared_experts=1, kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=16, v_head_dim=16, index_topk=8,
            index_head_dim=8, index_n_heads=2, index_kpool=4, linear_head_dim=8, linear_num_heads=2,
            hc_mult=hc_mult, max_position_embeddings=4 * seq, pad_token_id=0,
            # "full_attention": the indexed attention in every release (5.17 names it deepseek_sparse_attention)
            layer_types=["linear_attention", "full_attention", "full_attention"],
            indexer_types=["full", "full", "shared"], mlp_layer_types=["dense", "sparse", "sparse"],
        )  # fmt: skip
    else:
        heads = max(1, hidden // 128)
        text = dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            n_routed_experts=experts, num_experts_per_tok=2, n_shared_experts=1, kv_lora_rank=hidden // 4,
            q_lora_rank=hidden // 2, qk_nope_head_dim=128, v_head_dim=128, index_topk=min(256, seq // 4),
            index_head_dim=64, index_n_heads=8, linear_head_dim=128, linear_num_heads=heads, hc_mult=hc_mult,
            max_position_embeddings=4 * seq, pad_token_id=0,
        )  # fmt: skip
    return Glm5NextConfig(text_config=text, vision_config=vision)


def _deepseek_v4_trivial_head(self, x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=2)


@dataclasses.dataclass(frozen=True)
class Family:
    key: str
    label: str
    config: Callable  # (layers, hidden, hc_mult, seq, vocab, experts, toy) -> config
    model_class: str  # in transformers
    apply: Callable  # apply_to_<family>(model, **flags)
    layers: Callable  # model -> its decoder layers
    hyper_connection: str  # the HC module class
    trivial: dict = dataclasses.field(default_factory=dict)  # other class -> its trivial forward


FAMILIES = {
    "deepseek_v4": Family(
        "deepseek_v4", "DeepSeek-V4", deepseek_v4_config, "DeepseekV4ForCausalLM", apply_to_deepseek_v4,
        lambda m: m.model.layers, "DeepseekV4HyperConnection", {"DeepseekV4HyperHead": _deepseek_v4_trivial_head},
    ),
    "glm5_next": Family(
        "glm5_next", "GLM-5-Next", glm5_next_config, "Glm5NextForConditionalGeneration", apply_to_glm5_next,
        lambda m: m.model.language_model.layers, "Glm5NextTextHyperConnection",
    ),
}


class _TrivialMix:
    """The trivial block's post, in the patched layers' Mix protocol: out [B, S, D] added to every stream; never
    a boundary at decode (decodes() False)."""

    def __init__(self, streams: torch.Tensor):
        self.streams = streams

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return self.streams + out.unsqueeze(2)

    def decodes(self) -> bool:
        return False


def _trivial_mix(self, hidden_streams: torch.Tensor, *, mix: bool, after: tuple | None = None):
    """A hyper-connection that mixes trivially, in the patched layers' protocol (mix=True; after=(mix, out):
    the previous block's mix applied first, the streams returned too): the block's input is the mean of the
    streams [B, S, n, D] -> [B, S, D]; its output is added to every stream."""
    if after is not None:
        prev, out = after
        streams = prev(out)
        return streams, streams.mean(dim=2), _TrivialMix(streams)
    return hidden_streams.mean(dim=2), _TrivialMix(hidden_streams)


# ---- building and patching ------------------------------------------------------------------------------


def cast_as_loaded(model, dtype: torch.dtype):
    """Every floating-point parameter and buffer to dtype except those HF keeps in fp32
    (``_keep_in_fp32_modules_strict``, matched as from_pretrained matches it: a regex search of each
    entry, ``*`` a wildcard, in the parameter's name). In place."""
    keep = sorted(model._keep_in_fp32_modules_strict or ())
    kept = re.compile("|".join(k.replace("*", ".*") for k in keep)) if keep else None
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not (kept is not None and kept.search(name)):
            tensor.data = tensor.data.to(dtype)
    return model


def build_model(family: Family, config, device: torch.device, dtype: torch.dtype, seed: int):
    """The model on device, cast as loaded. DeepSeek-V4's hash-routed layers' tid2eid table, zero at init
    (every token to expert 0), is made random."""
    import transformers

    torch.manual_seed(seed)
    model = cast_as_loaded(getattr(transformers, family.model_class)(config).to(device), dtype)
    for name, buffer in model.named_buffers():
        if name.endswith("tid2eid"):
            k, experts = buffer.shape[1], config.n_routed_experts
            buffer.copy_(torch.stack([torch.randperm(experts)[:k] for _ in range(buffer.shape[0])]))
    return model.train()


def twin(model):
    """A second module tree over the same parameter and buffer tensors: the same weights, gradients and
    optimizer, with classes of its own to patch and compile."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, shared)


def variant_model(model, family: Family, variant: str, scope: str, backend: str, mode: str | None):
    """The variant's model: model itself (eager), else a twin patched as the variant says, its decoder
    layers (scope "layers") or the whole model compiled in place (nn.Module.compile: names and
    parameters unchanged). Compilation itself happens at the first call."""
    spec = VARIANTS[variant]
    if spec.patch is None and not spec.compiled:
        return model
    out = twin(model)
    if spec.patch is not None:
        family.apply(out, **dict(spec.flags))
    if spec.patch == "trivial":
        trivial = {family.hyper_connection: _trivial_mix} | family.trivial
        for module in out.modules():
            cls = type(module)
            if cls.__name__ in trivial:
                module.__class__ = type(cls.__name__, (cls,), {"forward": trivial[cls.__name__]})
    if spec.compiled:
        for module in family.layers(out) if scope == "layers" else (out,):
            module.compile(backend=backend, mode=mode)
    return out


def train_step(model, optimizer, ids, use_cache: bool | None = None) -> torch.Tensor:
    loss = model(input_ids=ids, labels=ids, use_cache=use_cache).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _short(path: str) -> str:
    for marker in ("site-packages/", str(pathlib.Path.cwd()) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def describe_failure(e: BaseException) -> str:
    """An exception as ``Type: first line (at file:line in function)``; a first line ending in ":" (Dynamo's
    "backend='inductor' raised:") with the next. The place is the innermost frame of the traced code that
    a Dynamo error names ("from user code:"), else the innermost traceback frame outside torch."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else "".join(lines[:1])  # "raised:"
    frames = _USER_FRAME.findall(str(e).split("from user code:", 1)[1]) if "from user code:" in str(e) else []
    if frames:
        path, line, name = frames[-1]
    else:
        tb = traceback.extract_tb(e.__traceback__)
        outside = [f for f in tb if "/torch/" not in f.filename] or tb
        path, line, name = (outside[-1].filename, outside[-1].lineno, outside[-1].name) if outside else ("?", 0, "?")
    return f"{type(e).__name__}: {first[:300]} (at {_short(path)}:{line} in {name})"


def _dynamo_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_round(model, optimizer, ids, steps: int, device: torch.device, warmup: int = 1, use_cache=None) -> dict:
    """`warmup` untimed steps, then `steps` timed ones: seconds per step and (CUDA) memory."""
    for _ in range(warmup):
        train_step(model, optimizer, ids, use_cache)
    sync(device)
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, ids, use_cache)
    sync(device)
    out = {"s_per_step": (time.perf_counter() - start) / steps}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out |= {"peak_mem_bytes": peak, "step_mem_bytes": peak - before}
    return out


# ---- one family's rounds, and the rows ------------------------------------------------------------------

ROW_KEYS = (
    "bench", "model", "variant", "layers", "hidden", "hc_mult", "seq", "batch", "vocab", "experts", "dtype",
    "tokens_per_s", "tokens_per_s_rounds", "step_ms", "speedup_vs_eager", "ms_above_trivial", "peak_mem_bytes",
    "step_mem_bytes", "step_mem_vs_eager", "loss", "loss_rel_diff_vs_eager", "rounds", "steps", "warmup_steps",
    "compile", "compile_backend", "compile_mode", "compile_s", "dynamo_graphs", "graph_breaks", "use_cache",
    "error", "gpu", "device_name", "date", "run", "torch", "triton", "transformers", "toy",
)  # fmt: skip


def run_family(args, family: Family, variants: list[str]) -> tuple[dict[str, list[dict]], dict, dict, int]:
    """-> (variant -> its rounds, variant -> its loss, variant -> what else its row records, the layers)."""
    device = args.device
    config = family.config(args.layers, args.hidden, args.hc_mult, args.seq, args.vocab, args.experts, args.toy)
    model = build_model(family, config, device, args.dtype, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(device)
    use_cache = False if args.no_cache else None  # None: the config's (True: HF builds a DynamicCache, even here)
    info: dict[str, dict] = {v: {} for v in variants}
    models = {}

    def fail(variant: str, e: Exception, when: str) -> None:
        info[variant]["error"] = f"{when}: {describe_failure(e)}"
        print(f"{family.key} {variant} failed ({info[variant]['error']})", file=sys.stderr, flush=True)
        optimizer.zero_grad(set_to_none=True)  # a step that broke off may have left gradients behind

    for variant in variants:
        try:
            models[variant] = variant_model(
                model, family, variant, args.compile_scope, args.compile_backend, args.compile_mode
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 (recorded in the variant's row)
            fail(variant, e, "patch or compile")
    losses: dict[str, float] = {}
    for variant in [v for v in variants if "error" not in info[v]]:
        # One untimed step each: the loss (lr 0 leaves the weights as they are) and, compiled, the compile.
        try:
            graphs, breaks = _dynamo_counts()
            start = time.perf_counter()
            losses[variant] = train_step(models[variant], optimizer, ids, use_cache).float().item()
            sync(device)
            if VARIANTS[variant].compiled:
                after = _dynamo_counts()
                info[variant] |= {"compile_s": time.perf_counter() - start, "dynamo_graphs": after[0] - graphs,
                                  "graph_breaks": after[1] - breaks}  # fmt: skip
        except Exception as e:  # noqa: BLE001
            fail(variant, e, "first step")
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        order = [v for v in order if "error" not in info[v]]
        print(f"{family.key} round {r + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
        for variant in order:
            warmup = max(args.warmup, COMPILED_WARMUP) if VARIANTS[variant].compiled else args.warmup
            try:
                rounds[variant].append(
                    measure_round(models[variant], optimizer, ids, args.steps, device, warmup, use_cache)
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001
                fail(variant, e, f"round {r + 1}")
            info[variant]["warmup_steps"] = warmup
    layers = getattr(config, "text_config", config).num_hidden_layers  # --toy: the family's own
    return rounds, losses, info, layers


def family_rows(args, family: Family, variants: list[str], base: dict) -> list[dict]:
    rounds, losses, info, layers = run_family(args, family, variants)
    tokens = args.batch * args.seq
    rows = []
    for variant, measured in rounds.items():
        row = dict.fromkeys(ROW_KEYS) | base | {"model": family.key, "variant": variant, "layers": layers}
        row |= info[variant]
        row["loss"] = losses.get(variant)
        if VARIANTS[variant].compiled:
            row |= {"compile": args.compile_scope, "compile_backend": args.compile_backend,
                    "compile_mode": args.compile_mode}  # fmt: skip
        if row["error"] is None:
            per_round = [tokens / m["s_per_step"] for m in measured]
            row |= {"tokens_per_s": statistics.median(per_round), "tokens_per_s_rounds": per_round}
            row["step_ms"] = 1e3 * tokens / row["tokens_per_s"]
            if args.device.type == "cuda":
                row["peak_mem_bytes"] = max(m["peak_mem_bytes"] for m in measured)
                row["step_mem_bytes"] = statistics.median(m["step_mem_bytes"] for m in measured)
        rows.append(row)
    ok = {r["variant"]: r for r in rows if r["tokens_per_s"] is not None}
    for row in ok.values():
        # Paired by round (the variants of a round ran back to back): robust to drift between rounds.
        if BASELINE in ok:
            ref = ok[BASELINE]
            row["speedup_vs_eager"] = statistics.median(
                a / b for a, b in zip(row["tokens_per_s_rounds"], ref["tokens_per_s_rounds"])
            )  # fmt: skip
            row["loss_rel_diff_vs_eager"] = abs(row["loss"] - ref["loss"]) / abs(ref["loss"])
            if ref["step_mem_bytes"]:
                row["step_mem_vs_eager"] = row["step_mem_bytes"] / ref["step_mem_bytes"]
        if FLOOR in ok:
            row["ms_above_trivial"] = statistics.median(
                1e3 * tokens * (1 / a - 1 / b) for a, b in zip(row["tokens_per_s_rounds"], ok[FLOOR]["tokens_per_s_rounds"])
            )  # fmt: skip
    return rows


def run(args) -> list[dict]:
    import transformers

    compiled = [v for v in args.variants if VARIANTS[v].compiled]
    if compiled:
        # Compiled layers share one code object (transformers' checkpointing wrapper) and, with HF's cache,
        # each layer guards on its own cache layer: one Dynamo cache entry per layer and variant, which
        # must not hit the recompile limit (8), past which the remaining layers would silently run eager
        # (docs/integrations.md, "Under torch.compile"). Twice that, and 8 more, leave room for recompiles.
        limit = 2 * args.layers * len(compiled) * len(args.models) + 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu"
    now = dt.datetime.now()
    base = {
        "bench": "hf_models", "layers": args.layers, "hidden": args.hidden, "hc_mult": args.hc_mult,
        "seq": args.seq, "batch": args.batch, "vocab": args.vocab, "experts": args.experts,
        "dtype": str(args.dtype).removeprefix("torch."), "rounds": args.rounds, "steps": args.steps,
        "use_cache": not args.no_cache, "gpu": gpu_tag(device_name), "device_name": device_name,
        "date": now.date().isoformat(), "run": now.isoformat(timespec="seconds"), "torch": torch.__version__,
        "triton": triton.__version__, "transformers": transformers.__version__, "toy": args.toy,
    }  # fmt: skip
    rows = []
    for key in args.models:
        family = FAMILIES[key]
        variants = [v for v in args.variants if VARIANTS[v].only is None or key in VARIANTS[v].only]
        rows += family_rows(args, family, variants, base)
        if args.device.type == "cuda":
            torch.cuda.empty_cache()  # the next family starts from the same free memory
    return rows


TABLE_COLUMNS = (
    "variant", "tokens_per_s", "step_ms", "speedup_vs_eager", "ms_above_trivial", "peak_mem_bytes",
    "step_mem_bytes", "step_mem_vs_eager", "loss", "loss_rel_diff_vs_eager",
)  # fmt: skip
COMPILE_COLUMNS = ("compile_s", "dynamo_graphs", "graph_breaks")  # when a variant is compiled
NUMBER_FORMAT = {
    "tokens_per_s": ".0f", "step_ms": ".2f", "speedup_vs_eager": ".3f", "ms_above_trivial": ".2f",
    "step_mem_vs_eager": ".3f", "loss": ".6f", "loss_rel_diff_vs_eager": ".2e", "compile_s": ".1f",
}  # fmt: skip


def format_table(rows: list[dict]) -> str:
    """One markdown table per model family."""

    def cell(row, key):
        value = row[key]
        if value is None:
            return "-"
        if key.endswith("_bytes"):
            return f"{value / 2**20:.0f} MiB"
        return format(value, NUMBER_FORMAT[key]) if key in NUMBER_FORMAT else str(value)

    out = []
    for key, family_rows_ in itertools.groupby(rows, key=lambda r: r["model"]):
        family_rows_ = list(family_rows_)
        r = family_rows_[0]
        title = (
            f"{FAMILIES[key].label} ({r['layers']} layers, hidden {r['hidden']}, hc_mult "
            f"{r['hc_mult']}, {r['batch']}x{r['seq']} tokens, {r['dtype']}, transformers {r['transformers']}) on "
            f"{r['device_name']}, median of {r['rounds']} rounds of {r['steps']} steps"
        )
        compiled = next((row for row in family_rows_ if row["compile"]), None)
        columns = TABLE_COLUMNS + (COMPILE_COLUMNS if compiled else ())
        if compiled:
            mode = f", mode {compiled['compile_mode']}" if compiled["compile_mode"] else ""
            scope = "each decoder layer" if compiled["compile"] == "layers" else "the whole model"
            title += f"; .compile: torch.compile of {scope}, backend {compiled['compile_backend']}{mode}"
        if any(row["error"] for row in family_rows_):
            columns += ("error",)
        out += [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        out += ["| " + " | ".join(cell(row, k) for k in columns) + " |" for row in family_rows_] + [""]
    return "\n".join(out).rstrip()


def write_jsonl(rows: list[dict], out: pathlib.Path) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{rows[0]['gpu']}-{rows[0]['date']}-hf-models.jsonl"
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in ROW_KEYS}) + "\n")
    return path


def _subset(p: argparse.ArgumentParser, flag: str, value: str, known) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names or set(names) - set(known):
        p.error(f"{flag}: expected a comma-separated subset of {', '.join(known)}, got {value!r}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hf_models", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(FAMILIES), help=f"comma-separated subset of {', '.join(FAMILIES)}")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--hc-mult", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--experts", type=int, default=8, help="routed experts per MoE layer")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per variant and round")
    p.add_argument("--warmup", type=int, default=1, help=f"untimed steps per variant and round (compiled: at least "
                   f"{COMPILED_WARMUP})")  # fmt: skip
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {', '.join(VARIANTS)} (mhc_ops.no_head: DeepSeek-V4 only)")  # fmt: skip
    p.add_argument("--compile-scope", choices=("layers", "model"), default="layers",
                   help="the .compile variants: torch.compile each decoder layer, or the whole model")  # fmt: skip
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager, aot_eager, inductor)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    p.add_argument("--no-cache", action="store_true",
                   help="use_cache=False in the forward (default: the config's, so HF builds a DynamicCache)")  # fmt: skip
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    p.add_argument("--toy", action="store_true",
                   help="CPU smoke test: the tests' tiny models (hidden 32), seq 16, 2 rounds of 1 step")  # fmt: skip
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="results folder")
    args = p.parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError:
        p.error("needs transformers: pip install mhc-ops[transformers]")
    if args.toy:
        args.layers, args.hidden, args.seq, args.vocab, args.experts, args.rounds, args.steps = 2, 32, 16, 64, 4, 2, 1
    args.models = _subset(p, "--models", args.models, FAMILIES)
    args.variants = _subset(p, "--variants", args.variants, VARIANTS)
    for name in ("layers", "hidden", "hc_mult", "seq", "batch", "vocab", "experts", "rounds", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: expected cuda, cuda:<i> or cpu, got {args.device!r}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (--toy runs the CPU smoke test)")
    default_dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    args.dtype = getattr(torch, args.dtype or default_dtype)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run, print the tables, append the JSON lines; returns the rows."""
    args = parse_args(argv)
    rows = run(args)
    print(format_table(rows))
    print(f"\nappended {len(rows)} rows to {write_jsonl(rows, args.out)}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
