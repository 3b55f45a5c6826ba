"""Stage registry and pipeline composer (mhc_ops.stages).

``STAGES[name]`` describes one stage of one op (mhc_pre, sinkhorn, mhc_post): the named tensors it
reads and writes and its golden and Triton implementations. ``Pipeline`` chains an op's stages with
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
from mhc_ops.golden.registry import STAGE_IO, STAGE_NAMES
from mhc_ops.kernels.dgamma import mhc_pre_dgamma
from mhc_ops.kernels.dh_mix import mhc_pre_dh_mix
from mhc_ops.kernels.dparams import mhc_pre_dparams
from mhc_ops.kernels.dx import mhc_pre_dx
from mhc_ops.kernels.fused_bwd import mhc_pre_backward_fused
from mhc_ops.kernels.fwd import mhc_pre_fwd
from mhc_ops.kernels.post import post_bwd, post_fwd
from mhc_ops.kernels.sinkhorn import sinkhorn_bwd, sinkhorn_fwd

BACKENDS = ("golden", "triton")
# staged: the four backward stage kernels (how a stage is debugged); fused: dx, dparams and dgamma
# in two passes over x with no [T, nD] intermediate (kernels/fused_bwd.py), Triton only.
PLANS = ("staged", "fused")
FORWARD_INPUTS = ("x", "phi", "alpha", "bias", "gamma")
BACKWARD_INPUTS = ("dh_in", "dh_post", "dh_res", "grad_x_post")
PRE_BACKWARD_STAGES = ("dh_mix", "dx", "dparams", "dgamma")


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
    "fwd": mhc_pre_fwd,
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
    """Chains each op's stages: mhc_pre fwd -> dh_mix -> dx -> dparams -> dgamma, sinkhorn
    sinkhorn_fwd -> sinkhorn_bwd, mhc_post post_fwd -> post_bwd.

    ``Pipeline("golden", dgamma="triton")`` runs every stage on the golden except dgamma. With
    ``plan="fused"`` mhc_pre's backward is the fused Triton kernels instead of its four stages (its
    per-stage backends then apply to fwd only). Each call returns a dict of every named tensor of
    the chain that the plan produces (inputs, intermediates and outputs). ``table``: the stages to
    run instead of the registry's, by name (how diagnose runs a mutant without touching STAGES).
    """

    def __init__(
        self, default: str = "golden", *, plan: str = "staged", table: Mapping[str, Stage] | None = None, **per_stage: str
    ):
        if plan not in PLANS:
            raise ValueError(f"plan: expected one of {PLANS}, got {plan!r}")
        self.plan = plan
        self.table = STAGES if table is None else {**STAGES, **table}
        for name, backend in {"default": default, **per_stage}.items():
            if name != "default" and name not in STAGES:
                raise ValueError(f"stage: expected one of {STAGE_NAMES}, got {name!r}")
            if backend not in BACKENDS:
                raise ValueError(f"{name}: expected a backend in {BACKENDS}, got {backend!r}")
        self.backends = {name: per_stage.get(name, default) for name in STAGE_NAMES}

    def __repr__(self) -> str:
        return f"Pipeline(plan={self.plan!r}, {', '.join(f'{k}={v!r}' for k, v in self.backends.items())})"

    def _run(self, name: str, env: dict, options: Mapping) -> None:
        stage = self.table[name]
        kwargs = {k: env[k] for k in stage.inputs} | {k: options[k] for k in stage.options}
        env.update(stage.run(self.backends[name], **kwargs))

    def forward(self, *, x, phi, alpha, bias, gamma=None, norm_eps=1e-6, hc_eps=1e-6) -> dict:
        """mhc_pre's forward."""
        env = {"x": x, "phi": phi, "alpha": alpha, "bias": bias, "gamma": gamma}
        self._run("fwd", env, {"norm_eps": norm_eps, "hc_eps": hc_eps})
        return env

    def backward(self, env: Mapping, *, dh_in, dh_post, dh_res, grad_x_post=None, hc_eps=1e-6) -> dict:
        """mhc_pre's backward. env holds the forward's inputs and saved tensors (x, phi, alpha, gamma,
        inv_rms, h_mix, h_pre, h_post); returns it extended with every backward intermediate and output."""
        env = dict(env) | {"dh_in": dh_in, "dh_post": dh_post, "dh_res": dh_res, "grad_x_post": grad_x_post}
        if self.plan == "fused":
            require_kernel_device("fused backward", env["x"])
            names = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma")
            env.update(mhc_pre_backward_fused(**{k: env[k] for k in names}, grad_x_post=grad_x_post, hc_eps=hc_eps))
            return env
        for name in ("dh_mix", "dx", "dparams"):
            self._run(name, env, {"hc_eps": hc_eps})
        if env.get("gamma") is not None:
            self._run("dgamma", env, {})
        else:
            env["dgamma"] = None
        return env

    def run(
        self, *, x, phi, alpha, bias, dh_in, dh_post, dh_res, gamma=None, grad_x_post=None, norm_eps=1e-6, hc_eps=1e-6
    ) -> dict:
        """mhc_pre's forward then backward with the given upstream gradients."""
        env = self.forward(x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, norm_eps=norm_eps, hc_eps=hc_eps)
        return self.backward(env, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, grad_x_post=grad_x_post,
                             hc_eps=hc_eps)  # fmt: skip


__all__ = ["BACKENDS", "PLANS", "STAGES", "Pipeline", "Stage"]
