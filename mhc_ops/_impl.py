"""What runs each stage of every op: the ``Route`` (a backend per stage) and the forward and backward
implementations it selects. Every path calls these same functions: the eager autograd Functions,
the compiled ops (mhc_ops/_opspec.py) and the layer's halves (mhc_ops/nn.py)."""

from __future__ import annotations

import functools

import torch

from ._validate import require_kernel_device
from .golden import mhc_post as golden_post
from .golden import mhc_pre as golden_pre
from .golden import sinkhorn as golden_sinkhorn
from .kernels._common import interpreting
from .kernels.decode import launch_decode
from .kernels.fused_bwd import launch_backward_fused
from .kernels.fwd import launch_fwd
from .kernels.post import launch_post_bwd, launch_post_fwd
from .kernels.sinkhorn import MAX_N, launch_sinkhorn_bwd, launch_sinkhorn_fwd
from .stages import PARTS, Pipeline, resolve_backends

BACKEND_CHOICES = ("auto", "golden", "triton")


class Route:
    """Which implementation runs each stage of every op. ``key`` is its canonical text, the form a
    compiled op carries (``Route.from_key``). Everything is computed here, once per distinct route
    (resolve_route caches them), so the hot path only reads attributes."""

    def __init__(self, backends: tuple[tuple[str, str], ...]):
        self.backends = backends  # (stage name, "golden" | "triton", or "parts" for a composite) for every stage
        self._backend = dict(backends)
        self.key = ";".join(f"{s}={b}" for s, b in backends)
        self.uses_triton = "triton" in self._backend.values()
        # mhc_pre's backward: "triton" (the fused kernels), "golden" (the golden chain) or "parts" (the
        # composer, each part on its own backend)
        self.pre_backward = self._backend["pre_bwd"]
        self.pipeline = Pipeline(**self._backend) if self.pre_backward == PARTS else None
        # torch.compile traces the op bodies of the all-Triton route (Inductor then launches the
        # kernels). Others stay opaque ops: a golden stage (traced, Inductor would recompute the
        # reference in its own way: in bf16 it failed the accuracy rule), the interpreter (its
        # launches cannot be traced), the composer (its stage launchers were not written to be).
        self.traced = set(self._backend.values()) == {"triton"} and not interpreting()

    def of(self, stage: str) -> str:
        return self._backend[stage]

    @staticmethod
    @functools.cache
    def from_key(key: str) -> Route:
        return _route_cached(tuple(tuple(part.split("=")) for part in key.split(";")))

    def __repr__(self) -> str:
        return f"Route({self.key!r})"


@functools.cache
def _route_cached(backends: tuple) -> Route:
    return Route(backends)


@functools.cache
def _route(backend: str, stages: tuple | None, on_cuda: bool) -> Route:
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend: expected one of {BACKEND_CHOICES}, got {backend!r}")
    default = ("triton" if on_cuda else "golden") if backend == "auto" else backend
    backends = resolve_backends(default, dict(stages or ()), composite_default=default)
    # Under torch.compile the route is built while tracing (Dynamo would trace through a cache anyway).
    make = Route if torch.compiler.is_compiling() else _route_cached
    return make(tuple(backends.items()))


def resolve_route(backend: str, stages, t: torch.Tensor) -> Route:
    """backend ("auto": Triton on CUDA tensors, golden on CPU) and stages (None, a dict of per-stage
    backends, or a Pipeline, whose backends then apply) -> the Route; a Triton stage on CPU tensors
    without the interpreter is an error here, before anything runs."""
    if isinstance(stages, Pipeline):
        per_stage = tuple(stages.backends.items())
    elif stages is None:
        per_stage = None
    elif isinstance(stages, dict):
        per_stage = tuple(sorted(stages.items()))
    else:
        raise TypeError(f"stages: expected None, a dict of stage -> backend or a Pipeline, got {type(stages).__name__}")
    resolve = _route.__wrapped__ if torch.compiler.is_compiling() else _route
    route = resolve(backend, per_stage, t.is_cuda)
    if route.uses_triton and t.device.type == "cpu":
        triton_stages = [s for s, b in route.backends if b == "triton"]
        what = "backend 'triton'" if backend == "triton" else f"stages {', '.join(triton_stages)} on 'triton'"
        require_kernel_device(what, t)
    return route


# --- mhc_pre ---------------------------------------------------------------------------------------------------


def pre_forward(route: Route, x, phi, alpha, bias, gamma, norm_eps, hc_eps) -> tuple:
    """-> (h_in, h_post, h_res, inv_rms, h_mix, h_pre)."""
    if route.of("pre_fwd") == "triton":
        return launch_fwd(x, phi, alpha, bias, gamma, norm_eps, hc_eps)
    out = golden_pre.stage_fwd(x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, norm_eps=norm_eps, hc_eps=hc_eps)
    return tuple(out[k] for k in ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"))


def pre_backward(route: Route, saved: tuple, dh_in, dh_post, dh_res, grad_x_post, hc_eps) -> tuple:
    """saved = (x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post) -> (dx, dphi, dalpha, dbias, dgamma).
    A None upstream gradient (an output the loss does not use) is zero."""
    x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post = saved
    dh_in, dh_post, dh_res = zero_grads(x, h_post, dh_in, dh_post, dh_res)
    if route.pre_backward == "triton":
        out = launch_backward_fused(
            x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, grad_x_post, hc_eps
        )
    elif route.pre_backward == "golden":
        return golden_pre.mhc_pre_backward(
            x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, hc_eps=hc_eps,
            grad_x_post=grad_x_post,
        )  # fmt: skip
    else:
        env = dict(x=x, phi=phi, alpha=alpha, gamma=gamma, inv_rms=inv_rms, h_mix=h_mix, h_pre=h_pre, h_post=h_post)
        out = route.pipeline.backward(
            env, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, grad_x_post=grad_x_post, hc_eps=hc_eps
        )
    return out["dx"], out["dphi"], out["dalpha"], out["dbias"], out["dgamma"]


def pre_delayed_forward(route: Route, x, phi, alpha, bias, gamma, h_pre_prev, norm_eps, hc_eps) -> tuple:
    """The delayed pre (DeepSeek-V4.1) -> (h_in, h_post, h_res, h_pre, inv_rms, h_mix)."""
    if route.of("pre_fwd") == "triton":
        h_in, h_post, h_res, inv_rms, h_mix, h_pre = launch_fwd(
            x, phi, alpha, bias, gamma, norm_eps, hc_eps, delayed=True, h_pre_prev=h_pre_prev
        )
        return h_in, h_post, h_res, h_pre, inv_rms, h_mix
    return golden_pre.mhc_pre_delayed_forward(x, phi, alpha, bias, gamma, h_pre_prev, norm_eps=norm_eps, hc_eps=hc_eps)


def pre_delayed_backward(route: Route, saved: tuple, dh_in, dh_post, dh_res, dh_pre, grad_x_post, hc_eps) -> tuple:
    """saved = (x, phi, alpha, gamma, h_pre_prev, inv_rms, h_mix, h_pre, h_post) -> (dx, dphi, dalpha,
    dbias, dgamma, dh_pre_prev). The fused Triton backward or the golden (mhc_pre_delayed takes no
    mixed per-stage backends)."""
    x, phi, alpha, gamma, h_pre_prev, inv_rms, h_mix, h_pre, h_post = saved
    dh_in, dh_post, dh_res = zero_grads(x, h_post, dh_in, dh_post, dh_res)
    if route.pre_backward == "triton":
        out = launch_backward_fused(
            x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, grad_x_post, hc_eps,
            delayed=True, h_pre_prev=h_pre_prev, dh_pre=dh_pre,
        )  # fmt: skip
        return out["dx"], out["dphi"], out["dalpha"], out["dbias"], out["dgamma"], out["dh_pre_prev"]
    return golden_pre.mhc_pre_delayed_backward(
        x, phi, alpha, dh_in, dh_post, dh_res, dh_pre, inv_rms, h_mix, h_pre, h_post, gamma, h_pre_prev,
        hc_eps=hc_eps, grad_x_post=grad_x_post,
    )  # fmt: skip


def zero_grads(x, h_post, dh_in, dh_post, dh_res):
    """An output the loss does not use comes back from autograd as None: its gradient is zero."""
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    dh_in = dh_in if dh_in is not None else x.new_zeros((*lead, D))
    dh_post = dh_post if dh_post is not None else h_post.new_zeros(h_post.shape)
    dh_res = dh_res if dh_res is not None else h_post.new_zeros((*lead, n, n))
    return dh_in, dh_post, dh_res


# --- sinkhorn --------------------------------------------------------------------------------------------------


def sinkhorn_max_n(route: Route) -> int | None:
    """The largest n the route's sinkhorn stages take: the kernel's MAX_N, or any n on the golden."""
    return MAX_N if "triton" in (route.of("sinkhorn_fwd"), route.of("sinkhorn_bwd")) else None


def sinkhorn_forward(route: Route, logits, iters, eps) -> torch.Tensor:
    """-> P [.., n, n] fp32."""
    if route.of("sinkhorn_fwd") == "triton":
        return launch_sinkhorn_fwd(logits, iters, eps)
    return golden_sinkhorn.stage_sinkhorn_fwd(logits=logits, iters=iters, eps=eps)["P"].float()


def sinkhorn_backward(route: Route, logits, dP, iters, eps) -> torch.Tensor:
    """-> dlogits in logits' dtype."""
    if route.of("sinkhorn_bwd") == "triton":
        return launch_sinkhorn_bwd(logits, dP, iters, eps)
    return golden_sinkhorn.stage_sinkhorn_bwd(logits=logits, dP=dP, iters=iters, eps=eps)["dlogits"].to(logits.dtype)


# --- mhc_post --------------------------------------------------------------------------------------------------


def post_forward(route: Route, x, h_res, h_out, h_post) -> torch.Tensor:
    """-> out [.., n, D] in x's dtype."""
    if route.of("post_fwd") == "triton":
        return launch_post_fwd(x, h_res, h_out, h_post)
    return golden_post.stage_post_fwd(x=x, h_res=h_res, h_out=h_out, h_post=h_post)["out"]


def post_backward(route: Route, x, h_res, h_out, h_post, dout) -> tuple:
    """-> (dx, dh_res, dh_out, dh_post): dx and dh_out in x's dtype, dh_res and dh_post fp32."""
    if route.of("post_bwd") == "triton":
        return launch_post_bwd(x, h_res, h_out, h_post, dout)
    out = golden_post.stage_post_bwd(x=x, h_res=h_res, h_out=h_out, h_post=h_post, dout=dout)
    return out["dx"], out["dh_res"].float(), out["dh_out"], out["dh_post"].float()


# --- the layer boundary at decode --------------------------------------------------------------------------------

DECODE_MAX_T = 64  # tokens up to which an inference boundary runs in one launch (kernels/decode.py)
# Streams up to which it does: the one launch is the faster boundary up to n = 6, the slower at n = 8 (H200, bf16,
# 1 x n x 4096, GPU time of a CUDA graph: delayed 14.2 / 20.0 / 48.3 us against the ops' 23.1 / 30.1 / 41.3 at
# n = 4 / 6 / 8; plain, its collapse launched apart, 12.3 / 14.8 / 48.7 against 22.5 / 32.0 / 37.9; docs/perf.md,
# Performance XVII).
DECODE_MAX_N = 6


def decodes(x: torch.Tensor, routes) -> bool:
    """Whether a boundary on streams x [.., n, D] runs through boundary_decode (eager, or compiled as
    ops.BOUNDARY_DECODE): inference (no autograd), at most DECODE_MAX_T tokens and DECODE_MAX_N streams, every stage
    of every route on Triton."""
    if torch.is_grad_enabled() or x.dim() < 3:
        return False
    n, D = x.shape[-2], x.shape[-1]
    if n > DECODE_MAX_N or x.numel() > DECODE_MAX_T * n * D:
        return False
    return all(b == "triton" for route in routes for _, b in route.backends)


def boundary_decode(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, iters, eps, norm_eps, hc_eps):
    """post(l), the next pre (the delayed pre collapsed with h_pre_prev, pre(l)'s h_pre; the plain mhc_pre with
    h_pre_prev None) and sinkhorn of its h_res, in one launch (two for the plain pre where its grid outgrows the
    GPU's SMs: its collapse needs the coefficients, kernels/decode.py), not differentiable -> (x_next, h_in,
    h_post, P = sinkhorn(h_res), h_pre) of the next sublayer."""
    out, h_in, h_post_next, _, _, _, h_pre, P = launch_decode(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias,
                                                              gamma, norm_eps, hc_eps, iters, eps)  # fmt: skip
    return out, h_in, h_post_next, P, h_pre
