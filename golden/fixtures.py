"""Deterministic golden fixtures: every named tensor of mhc_pre for one case, and per-stage views.

A bundle is built by running the stages in order in float64 on the inputs, rounding each stage's
outputs to the dtype they are stored in (x's dtype for h_in and dx, float32 for the rest), and
feeding those rounded tensors to the next stage, as a real chain does. For each stage the bundle
keeps the float64 golden outputs computed on exactly the stage's (rounded) inputs: that is the
reference of the accuracy rule.

Regenerate the committed frozen fixtures with ``python -m mhc_ops.golden --write DIR``
(``nox -s fixtures``).
"""

from __future__ import annotations

import argparse
import math
import pathlib
from dataclasses import asdict, dataclass, field

import torch

from .registry import COMPOSITES, OP_STAGES, STAGE_IO

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Tensors stored in x's dtype; every other float tensor is stored in float32.
X_DTYPE_TENSORS = ("x", "h_in", "dh_in", "grad_x_post", "dx", "h_out", "dh_out", "dout", "out")


@dataclass(frozen=True)
class Case:
    """One fixture of one op: shape, layout (from ``lead``), x dtype, seed and options."""

    lead: tuple[int, ...]  # (B, S) for BSND, (T,) for TND
    n: int
    D: int = 1  # unused by sinkhorn
    dtype: str = "bfloat16"
    seed: int = 0
    gamma: bool = True
    grad_x_post: bool = False
    x_scale: float = 1.0  # far from 1 moves inv_rms far from 1
    norm_eps: float = 1e-6
    hc_eps: float = 1e-6
    op: str = "mhc_pre"  # an op of golden.registry.OPS: which inputs are made and which stages run
    iters: int = 20  # sinkhorn
    eps: float = 1e-6  # sinkhorn
    logits_init: str = "random"  # sinkhorn: "random", or "identity" (6*I - 3 plus noise: not converged)

    @property
    def layout(self) -> str:
        return {2: "BSND", 1: "TND"}[len(self.lead)]

    @property
    def T(self) -> int:
        return math.prod(self.lead)

    @property
    def O(self) -> int:
        return self.n * self.n + 2 * self.n

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def __str__(self) -> str:
        if self.op == "sinkhorn":
            return f"sinkhorn-lead{'x'.join(map(str, self.lead))}-n{self.n}-it{self.iters}-{self.logits_init}-seed{self.seed}"
        if self.op == "mhc_post":
            return f"post-lead{'x'.join(map(str, self.lead))}-n{self.n}-D{self.D}-{self.dtype}-seed{self.seed}"
        opts = [self.layout, self.dtype, f"seed{self.seed}"]
        opts += ["gamma" if self.gamma else "nogamma"]
        opts += ["gxp"] if self.grad_x_post else []
        opts += [f"xs{self.x_scale:g}"] if self.x_scale != 1.0 else []
        return f"lead{'x'.join(map(str, self.lead))}-n{self.n}-D{self.D}-" + "-".join(opts)


def make_inputs(case: Case, device: str | torch.device = "cpu") -> dict[str, torch.Tensor | None]:
    """Fresh random inputs of ``case.op``; never zeros, upstream gradients random.

    mhc_pre: phi scaled so m = h_mix*inv_rms is O(1). sinkhorn: logits of spread ~2 (or near-identity),
    dP. mhc_post: a doubly stochastic h_res (not symmetric: a transposed h_res gives another answer),
    h_post in (0, 2), dout."""
    if case.op not in OP_STAGES:
        raise ValueError(f"case.op: expected one of {tuple(OP_STAGES)}, got {case.op!r}")
    g = torch.Generator(device=device).manual_seed(case.seed)
    n, D, O, lead, dt = case.n, case.D, case.O, case.lead, case.torch_dtype

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device, dtype=torch.float32)

    if case.op == "sinkhorn":
        if case.logits_init == "identity":
            logits = 6 * torch.eye(n, device=device) - 3 + 0.1 * randn(*lead, n, n)
        else:
            logits = 2 * randn(*lead, n, n)
        return {"logits": logits, "dP": randn(*lead, n, n)}
    if case.op == "mhc_post":
        h_res = torch.softmax(2 * randn(*lead, n, n).double(), dim=-1)
        for _ in range(10):  # alternate normalisations: close to doubly stochastic
            h_res = h_res / h_res.sum(-2, keepdim=True)
            h_res = h_res / h_res.sum(-1, keepdim=True)
        return {
            "x": (randn(*lead, n, D) * case.x_scale).to(dt),
            "h_res": h_res.float(),
            "h_out": randn(*lead, D).to(dt),
            "h_post": 2 * torch.sigmoid(randn(*lead, n)),
            "dout": randn(*lead, n, D).to(dt),
        }

    x = (randn(*lead, n, D) * case.x_scale).to(dt)
    phi = randn(O, n * D) / math.sqrt(n * D)
    alpha = 0.5 + torch.rand(3, generator=g, device=device)
    bias = 0.5 * randn(O)
    gamma = 1.0 + 0.5 * randn(n, D) if case.gamma else None
    dh_in = randn(*lead, D).to(dt)
    dh_post = randn(*lead, n)
    dh_res = randn(*lead, n, n)
    grad_x_post = randn(*lead, n, D).to(dt) if case.grad_x_post else None
    return {
        "x": x,
        "phi": phi,
        "alpha": alpha,
        "bias": bias,
        "gamma": gamma,
        "dh_in": dh_in,
        "dh_post": dh_post,
        "dh_res": dh_res,
        "grad_x_post": grad_x_post,
    }


def run_golden(stage: str, inputs: dict, precision: str) -> dict[str, torch.Tensor]:
    """Run one golden stage on ``inputs`` (tensors and options by name).

    ``precision="fp64"`` upcasts every float tensor to float64 first, so outputs stored in x's
    dtype (h_in, dx) come back unrounded: that is the reference. ``"fp32"`` runs as a user would.
    """
    if precision == "fp64":
        inputs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        cd = torch.float64
    elif precision == "fp32":
        cd = torch.float32
    else:
        raise ValueError(f"precision: expected 'fp64' or 'fp32', got {precision!r}")
    return STAGE_IO[stage]["golden"](**inputs, compute_dtype=cd)


def storage_dtype(name: str, x_dtype: torch.dtype) -> torch.dtype:
    return x_dtype if name in X_DTYPE_TENSORS else torch.float32


@dataclass
class Bundle:
    case: Case
    tensors: dict[str, torch.Tensor | None]  # every named tensor, as stored (rounded)
    reference: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # stage -> fp64 outputs

    def stages(self) -> tuple[str, ...]:
        """The stages of the case's op that it runs (dgamma only with gamma)."""
        return tuple(s for s in OP_STAGES[self.case.op] if s != "dgamma" or self.case.gamma)

    def stage_inputs(self, stage: str) -> dict:
        """The golden inputs of one stage, as keyword arguments (tensors and options)."""
        io = STAGE_IO[stage]
        kw = {k: self.tensors[k] for k in io["inputs"]}
        kw.update({k: getattr(self.case, k) for k in io["options"]})
        return kw

    def stage_view(self, stage: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """(inputs, expected fp64 outputs) of one stage, for running it in isolation."""
        return self.stage_inputs(stage), self.reference[stage]


def build(case: Case, device: str | torch.device = "cpu") -> Bundle:
    """Every named tensor of ``case``: inputs, then each stage in order on rounded inputs."""
    tensors = make_inputs(case, device)
    bundle = Bundle(case, tensors)
    for stage in bundle.stages():
        out64 = run_golden(stage, bundle.stage_inputs(stage), "fp64")
        bundle.reference[stage] = {k: out64[k] for k in STAGE_IO[stage]["outputs"]}
        for k, v in out64.items():
            tensors[k] = v.to(storage_dtype(k, case.torch_dtype))
    if case.op == "mhc_pre":
        tensors.setdefault("dgamma", None)
    for stage in (c for c in COMPOSITES if STAGE_IO[c]["op"] == case.op):  # fp64 on its own (stored) inputs
        out64 = run_golden(stage, bundle.stage_inputs(stage), "fp64")
        bundle.reference[stage] = {k: out64[k] for k in STAGE_IO[stage]["outputs"] if out64[k] is not None}
    return bundle



# Tiny cases committed under tests/fixtures/frozen: mhc_pre in each layout and one with inv_rms far
# from 1; sinkhorn with random and near-identity (not converged) logits; mhc_post in bf16 and fp32.
FROZEN_CASES = {
    "bsnd_bf16_gamma": Case(lead=(2, 3), n=4, D=7, dtype="bfloat16", seed=1),
    "tnd_fp32_nogamma_gxp": Case(lead=(5,), n=3, D=5, dtype="float32", seed=2, gamma=False, grad_x_post=True),
    "tnd_fp16_xscale": Case(lead=(4,), n=2, D=9, dtype="float16", seed=3, grad_x_post=True, x_scale=8.0),
    "sinkhorn_bsnd_random": Case(lead=(2, 3), n=4, seed=4, op="sinkhorn"),
    "sinkhorn_tnd_identity_n6": Case(lead=(5,), n=6, seed=5, op="sinkhorn", logits_init="identity"),
    "post_bsnd_bf16": Case(lead=(2, 3), n=4, D=7, dtype="bfloat16", seed=6, op="mhc_post"),
    "post_tnd_fp32_n3": Case(lead=(5,), n=3, D=5, dtype="float32", seed=7, op="mhc_post"),
}


def save(bundle: Bundle, path: pathlib.Path) -> None:
    torch.save({"case": asdict(bundle.case), "tensors": bundle.tensors, "reference": bundle.reference}, path)


def load(path: pathlib.Path) -> Bundle:
    data = torch.load(path, weights_only=True)
    case = Case(**{**data["case"], "lead": tuple(data["case"]["lead"])})
    return Bundle(case, data["tensors"], data["reference"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Regenerate the frozen golden fixtures.")
    p.add_argument("--write", type=pathlib.Path, required=True, help="folder to write <name>.pt into")
    args = p.parse_args(argv)
    args.write.mkdir(parents=True, exist_ok=True)
    for name, case in FROZEN_CASES.items():
        save(build(case), args.write / f"{name}.pt")
        print(f"wrote {args.write / name}.pt  ({case})")
