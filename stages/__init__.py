"""Stage registry and pipeline composer (mhc_ops.stages).

``STAGES[name]`` describes one stage of one op (mhc_pre, sinkhorn, mhc_post): the named tensors it
reads and writes and its golden and Triton implementations; a composite (pre_bwd, mhc_pre's backward
as one stage) stands for its parts. ``Pipeline`` chains an op's stages with
the backend of each stage chosen separately, and keeps every named tensor of the chain for
inspection. It is the debugging and mixing tool: the differentiable ops take one (or a dict of
per-stage backends) as ``stages=`` and route the stages through it, while the all-Triton default
calls the kernels directly (mhc_ops/ops.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from mhc_ops._validate import require_kernel_device
from mhc_ops.golden.registry import COMPOSITES, OP_STAGES, STAGE_IO, STAGE_NAMES
from mhc_ops.kernels.dgamma import mhc_pre_dgamma
from mhc_ops.kernels.dh_mix import mhc_pre_dh_mix
from mhc_ops.kernels.dparams import mhc_pre_dparams
from mhc_ops.kernels.dx import mhc_pre_dx
from mhc_ops.kernels.fused_bwd import mhc_pre_backward_fused
from mhc_ops.kernels.fwd import mhc_pre_fwd
from mhc_ops.kernels.post import post_bwd, post_fwd
from mhc_ops.kernels.sinkhorn import sinkhorn_bwd, sinkhorn_fwd

BACKENDS = ("golden", "triton")
# A composite stage's third choice: run its parts, each on its own backend (how a part is debugged).
PARTS = "parts"
FORWARD_INPUTS = ("x", "phi", "alpha", "bias", "gamma")
BACKWARD_INPUTS = ("dh_in", "dh_post", "dh_res", "grad_x_post")
# Inputs a stage may be run without (None).
OPTIONAL_INPUTS = ("gamma", "grad_x_post")


def resolve_backends(default: str, per_stage: Mapping[str, str], composite_default: str) -> dict[str, str]:
    """The backend of every stage: per_stage's, else default. A composite (pre_bwd) is ``PARTS`` when any of
    its parts is given, else per_stage's or composite_default; on a backend, its parts take that backend
    (they do not run). Giving a composite a backend and one of its parts another is an error."""
    for name, backend in {"default": default, **per_stage}.items():
        if name == "plan":
            raise ValueError("plan: not an argument any more; pre_bwd='triton' runs the fused backward, "
                             "pre_bwd='parts' (or a part's backend) its four stages")  # fmt: skip
        if name != "default" and name not in STAGE_NAMES:
            raise ValueError(f"stages: expected stage names in {STAGE_NAMES}, got {name!r}")
        choices = (*BACKENDS, PARTS) if name in COMPOSITES else BACKENDS
        if backend not in choices:
            what = "default backend" if name == "default" else f"stages[{name!r}]"
            raise ValueError(f"{what}: expected a backend in {choices}, got {backend!r}")
    backends = {name: per_stage.get(name, default) for name in STAGE_NAMES if name not in COMPOSITES}
    for name, parts in COMPOSITES.items():
        given = [p for p in parts if p in per_stage]
        chosen = per_stage.get(name, PARTS if given else composite_default)
        if chosen != PARTS and any(per_stage[p] != chosen for p in given):
            raise ValueError(
                f"stages: {name!r} stands for {', '.join(parts)}: give it a backend or give its parts theirs, "
                f"not both (got {name}={chosen!r} and {', '.join(given)})"
            )
        backends[name] = chosen
        if chosen != PARTS:
            backends |= dict.fromkeys(parts, chosen)
    return {name: backends[name] for name in STAGE_NAMES}


@dataclass(frozen=True)
class Stage:
    name: str
    op: str
    inputs: tuple[str, ...]
    options: tuple[str, ...]
    outputs: tuple[str, ...]
    golden: Callable[..., dict]
    triton: Callable[..., dict]

    def run(self, backend: str, **kwargs) -> dict[str, torch.Tensor]:
        """Run on named inputs and options; the golden runs in fp32 and may return extra named
        intermediates (dh_mix_tmp, dvecX_inv, dvecX_hin, G)."""
        if backend == "golden":
            return self.golden(**kwargs, compute_dtype=torch.float32)
        if backend == "triton":
            require_kernel_device(f"stage {self.name}", kwargs[self.inputs[0]])
            return self.triton(**kwargs)
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


_TRITON = {
    "pre_fwd": mhc_pre_fwd,
    "pre_bwd": mhc_pre_backward_fused,
    "dh_mix": mhc_pre_dh_mix,
    "dx": mhc_pre_dx,
    "dparams": mhc_pre_dparams,
    "dgamma": mhc_pre_dgamma,
    "sinkhorn_fwd": sinkhorn_fwd,
    "sinkhorn_bwd": sinkhorn_bwd,
    "post_fwd": post_fwd,
    "post_bwd": post_bwd,
}
STAGES = {
    name: Stage(name, io["op"], io["inputs"], io["options"], io["outputs"], io["golden"], _TRITON[name])
    for name, io in STAGE_IO.items()
}


class Pipeline:
    """Chains each op's stages: mhc_pre pre_fwd -> pre_bwd (or its parts dh_mix -> dx -> dparams -> dgamma),
    sinkhorn sinkhorn_fwd -> sinkhorn_bwd, mhc_post post_fwd -> post_bwd.

    ``Pipeline("golden", dgamma="triton")`` runs every stage on the golden except dgamma. The composite
    pre_bwd runs its parts, each on its own backend, unless it is given one (``pre_bwd="triton"``: the
    fused backward that training runs, which produces the outputs and dh_mix but not the parts'
    intermediates). Each call returns a dict of every named tensor of the chain (inputs, intermediates
    and outputs). ``table``: the stages to run instead of the registry's, by name (how diagnose runs a
    mutant without touching STAGES).
    """

    def __init__(self, default: str = "golden", *, table: Mapping[str, Stage] | None = None, **per_stage: str):
        self.backends = resolve_backends(default, per_stage, composite_default=PARTS)
        self.table = STAGES if table is None else {**STAGES, **table}

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(f'{k}={v!r}' for k, v in self.backends.items())})"

    def stages_of(self, op: str) -> tuple[str, ...]:
        """The stages a chain of ``op`` runs, in order: a composite on a backend in place of its parts."""
        out = []
        for name in OP_STAGES[op]:
            whole = next((c for c, parts in COMPOSITES.items() if name in parts and self.backends[c] != PARTS), None)
            if whole is None:
                out.append(name)
            elif whole not in out:
                out.append(whole)
        return tuple(out)

    def chain(self, op: str, /, **named) -> dict:
        """Every stage of ``op`` in order (``stages_of``) on named tensors and options (mhc_pre: x, phi,
        alpha, bias, gamma, dh_in, dh_post, dh_res, grad_x_post, norm_eps, hc_eps; sinkhorn: logits, dP,
        iters, eps; mhc_post: x, h_res, h_out, h_post, dout) -> every named tensor of the chain."""
        if op not in OP_STAGES:
            raise ValueError(f"op: expected one of {tuple(OP_STAGES)}, got {op!r}")
        return self._chain(self.stages_of(op), named)

    def forward(self, *, x, phi, alpha, bias, gamma=None, norm_eps=1e-6, hc_eps=1e-6) -> dict:
        """mhc_pre's forward."""
        named = dict(x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, norm_eps=norm_eps, hc_eps=hc_eps)
        return self._chain(self.stages_of("mhc_pre")[:1], named)

    def backward(self, env: Mapping, *, dh_in, dh_post, dh_res, grad_x_post=None, hc_eps=1e-6) -> dict:
        """mhc_pre's backward. env holds the forward's inputs and saved tensors (x, phi, alpha, gamma,
        inv_rms, h_mix, h_pre, h_post); returns it extended with every backward intermediate and output."""
        named = dict(env) | dict(dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, grad_x_post=grad_x_post, hc_eps=hc_eps)
        return self._chain(self.stages_of("mhc_pre")[1:], named)

    def run(
        self, *, x, phi, alpha, bias, dh_in, dh_post, dh_res, gamma=None, grad_x_post=None, norm_eps=1e-6, hc_eps=1e-6
    ) -> dict:
        """mhc_pre's forward then backward with the given upstream gradients."""
        return self.chain("mhc_pre", x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, dh_in=dh_in, dh_post=dh_post,
                          dh_res=dh_res, grad_x_post=grad_x_post, norm_eps=norm_eps, hc_eps=hc_eps)  # fmt: skip

    def _chain(self, stages: tuple[str, ...], named: Mapping) -> dict:
        options = {k for name in stages for k in self.table[name].options}
        env = {k: v for k, v in named.items() if k not in options}
        for name in stages:
            stage = self.table[name]
            if name == "dgamma" and env.get("gamma") is None:  # no gamma: no dgamma stage
                env["dgamma"] = None
                continue
            missing = [k for k in stage.inputs if k not in env and k not in OPTIONAL_INPUTS]
            missing += [k for k in stage.options if k not in named]
            if missing:
                raise ValueError(f"stage {name}: missing {', '.join(missing)}")
            kwargs = {k: env.get(k) for k in stage.inputs} | {k: named[k] for k in stage.options}
            env.update(stage.run(self.backends[name], **kwargs))
        return env


__all__ = ["BACKENDS", "PARTS", "STAGES", "Pipeline", "Stage", "resolve_backends"]
