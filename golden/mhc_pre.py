"""Golden PyTorch reference of mhc_pre, forward and backward, stage by stage.

Every function follows the names of the contract (docs/math.md): one grep finds a quantity in
golden, kernels, fixtures and tests. All arithmetic runs in ``compute_dtype`` (float32 for the
fp32 golden, float64 for the verification golden); only ``h_in`` and ``dx`` are stored in x's dtype.

Shapes: x is ``[B, S, n, D]`` (BSND) or ``[T, n, D]`` (TND); every per-token tensor has the same
leading dims. ``O = n*n + 2*n`` coefficients per token are ordered ``[pre (n) | post (n) | res (n*n)]``.
"""

from __future__ import annotations

import torch

__all__ = [
    "mhc_pre_forward",
    "mhc_pre_backward",
    "stage_fwd",
    "stage_dh_mix",
    "stage_dx",
    "stage_dparams",
    "stage_dgamma",
    "mhc_pre_delayed_forward",
    "mhc_pre_delayed_backward",
]


def _dims(x: torch.Tensor) -> tuple[tuple[int, ...], int, int]:
    if x.dim() not in (3, 4):
        raise ValueError(f"x: expected [B, S, n, D] or [T, n, D], got shape {tuple(x.shape)}")
    return tuple(x.shape[:-2]), x.shape[-2], x.shape[-1]


def _gamma_flat(gamma: torch.Tensor | None, n: int, D: int, cd: torch.dtype) -> torch.Tensor | None:
    # [n, D] -> [nD] in the compute dtype; None means gamma == 1 everywhere.
    return None if gamma is None else gamma.reshape(n * D).to(cd)


def collapse_coefficients(h_pre, h_pre_prev, delayed: bool, n: int, cd: torch.dtype) -> torch.Tensor:
    """[T, n] coefficients of h_in = sum_i c[i] * x[i]: this x's h_pre, or with the delayed pre
    (DeepSeek-V4.1) the previous sublayer's h_pre_prev, or stream 0 alone when there is none."""
    if not delayed:
        return h_pre.reshape(-1, n).to(cd)
    if h_pre_prev is not None:
        return h_pre_prev.reshape(-1, n).to(cd)
    first = torch.zeros(n, dtype=cd, device=h_pre.device)
    first[0] = 1
    return first.expand(h_pre.reshape(-1, n).shape[0], n)


def stage_fwd(
    *, x, phi, alpha, bias, gamma=None, h_pre_prev=None, delayed=False, norm_eps=1e-6, hc_eps=1e-6,
    compute_dtype=torch.float32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The forward: h_mix and inv_rms from x, the coefficients, h_in (delayed: collapsed with
    h_pre_prev, or stream 0 when it is None)."""
    lead, n, D = _dims(x)
    cd = compute_dtype
    v = x.reshape(-1, n * D).to(cd)  # [T, nD]
    g = _gamma_flat(gamma, n, D, cd)
    vg = v if g is None else v * g
    h_mix = vg @ phi.to(cd).t()  # [T, O], before the RMS scaling
    inv_rms = torch.rsqrt(v.square().mean(dim=-1) + norm_eps)  # [T], on raw v
    m = h_mix * inv_rms[:, None]
    a = alpha.to(cd)
    b = bias.to(cd)
    h_pre = torch.sigmoid(a[0] * m[:, :n] + b[:n]) + hc_eps
    h_post = 2 * torch.sigmoid(a[1] * m[:, n : 2 * n] + b[n : 2 * n])
    h_res = a[2] * m[:, 2 * n :] + b[2 * n :]
    coll = collapse_coefficients(h_pre, h_pre_prev, delayed, n, cd)
    h_in = (coll[:, :, None] * v.view(-1, n, D)).sum(dim=1)  # [T, D]
    return {
        "h_in": h_in.to(x.dtype).reshape(*lead, D),
        "h_post": h_post.reshape(*lead, n),
        "h_res": h_res.reshape(*lead, n, n),
        "inv_rms": inv_rms.reshape(lead),
        "h_mix": h_mix.reshape(*lead, n * n + 2 * n),
        "h_pre": h_pre.reshape(*lead, n),
    }


def stage_dh_mix(
    *,
    x,
    phi,
    alpha,
    dh_in,
    dh_post,
    dh_res,
    inv_rms,
    h_mix,
    h_pre,
    h_post,
    gamma=None,
    dh_pre=None,
    delayed=False,
    hc_eps=1e-6,
    compute_dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """Gradients of the coefficients (dh_mix) and of v*gamma through the GEMM (dvecX_mm).

    delayed: h_in was collapsed with h_pre_prev, so sum_d dh_in*x[i] is dh_pre_prev (the gradient of
    the previous sublayer's coefficients), and the dh_pre that enters dh_pre2 is the gradient of this
    h_pre from the next sublayer (None: zero)."""
    lead, n, D = _dims(x)
    cd = compute_dtype
    v = x.reshape(-1, n * D).to(cd)
    a = alpha.to(cd)
    dh_in_t = dh_in.reshape(-1, D).to(cd)
    dh_coll = torch.einsum("tid,td->ti", v.view(-1, n, D), dh_in_t)  # [T, n], gradient of h_in's coefficients
    if delayed:
        dh_pre = torch.zeros_like(dh_coll) if dh_pre is None else dh_pre.reshape(-1, n).to(cd)
    else:
        dh_pre = dh_coll
    s = h_pre.reshape(-1, n).to(cd) - hc_eps  # sigmoid of the pre logit
    dh_pre2 = dh_pre * s * (1 - s)
    hp = h_post.reshape(-1, n).to(cd)
    dh_post2 = dh_post.reshape(-1, n).to(cd) * hp * (1 - hp / 2)
    dh_res_t = dh_res.reshape(-1, n * n).to(cd)
    dh_mix_tmp = torch.cat([a[0] * dh_pre2, a[1] * dh_post2, a[2] * dh_res_t], dim=-1)  # [T, O]
    ir = inv_rms.reshape(-1).to(cd)
    dh_mix = dh_mix_tmp * ir[:, None]
    dinv_rms = (dh_mix_tmp * h_mix.reshape(-1, n * n + 2 * n).to(cd)).sum(dim=-1)
    dvecX_mm = dh_mix @ phi.to(cd)  # [T, nD], gradient of v*gamma
    O = n * n + 2 * n
    out = {"dh_pre_prev": dh_coll.reshape(*lead, n)} if delayed else {}
    return out | {
        "dh_pre": dh_pre.reshape(*lead, n),
        "dh_pre2": dh_pre2.reshape(*lead, n),
        "dh_post2": dh_post2.reshape(*lead, n),
        "dh_mix_tmp": dh_mix_tmp.reshape(*lead, O),
        "dh_mix": dh_mix.reshape(*lead, O),
        "dinv_rms": dinv_rms.reshape(lead),
        "dvecX_mm": dvecX_mm.reshape(*lead, n * D),
    }


def stage_dx(
    *,
    x,
    dvecX_mm,
    dinv_rms,
    inv_rms,
    h_pre,
    dh_in,
    gamma=None,
    grad_x_post=None,
    compute_dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """dx = dvecX_mm*gamma + dvecX_inv + dvecX_hin (+ grad_x_post), stored in x's dtype. h_pre: the
    coefficients h_in was collapsed with (with the delayed pre, collapse_coefficients')."""
    lead, n, D = _dims(x)
    cd = compute_dtype
    nD = n * D
    v = x.reshape(-1, nD).to(cd)
    g = _gamma_flat(gamma, n, D, cd)
    ir = inv_rms.reshape(-1, 1).to(cd)
    dvecX_inv = -dinv_rms.reshape(-1, 1).to(cd) * ir**3 / nD * v
    dvecX_hin = (h_pre.reshape(-1, n, 1).to(cd) * dh_in.reshape(-1, 1, D).to(cd)).reshape(-1, nD)
    mm = dvecX_mm.reshape(-1, nD).to(cd)
    dx = (mm if g is None else mm * g) + dvecX_inv + dvecX_hin
    if grad_x_post is not None:
        dx = dx + grad_x_post.reshape(-1, nD).to(cd)
    return {
        "dvecX_inv": dvecX_inv.reshape(*lead, nD),
        "dvecX_hin": dvecX_hin.reshape(*lead, nD),
        "dx": dx.to(x.dtype).reshape(x.shape),
    }


def stage_dparams(
    *,
    x,
    dh_pre2,
    dh_post2,
    dh_res,
    dh_mix,
    h_mix,
    inv_rms,
    gamma=None,
    compute_dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """dbias, dalpha and dphi: sums over all tokens. G = sum_t dh_mix^T v is the shared GEMM."""
    _, n, D = _dims(x)
    cd = compute_dtype
    O = n * n + 2 * n
    v = x.reshape(-1, n * D).to(cd)
    g = _gamma_flat(gamma, n, D, cd)
    p2 = dh_pre2.reshape(-1, n).to(cd)
    q2 = dh_post2.reshape(-1, n).to(cd)
    r = dh_res.reshape(-1, n * n).to(cd)
    m = h_mix.reshape(-1, O).to(cd) * inv_rms.reshape(-1, 1).to(cd)
    dbias = torch.cat([p2.sum(0), q2.sum(0), r.sum(0)])
    dalpha = torch.stack([(p2 * m[:, :n]).sum(), (q2 * m[:, n : 2 * n]).sum(), (r * m[:, 2 * n :]).sum()])
    G = dh_mix.reshape(-1, O).to(cd).t() @ v  # [O, nD]
    dphi = G if g is None else G * g
    return {"G": G, "dphi": dphi, "dalpha": dalpha, "dbias": dbias}


def stage_dgamma(*, x, dvecX_mm, compute_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """dgamma = sum_t v * dvecX_mm, reshaped [n, D]."""
    _, n, D = _dims(x)
    cd = compute_dtype
    v = x.reshape(-1, n * D).to(cd)
    dgamma = (v * dvecX_mm.reshape(-1, n * D).to(cd)).sum(0)
    return {"dgamma": dgamma.reshape(n, D)}


def mhc_pre_forward(x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, compute_dtype=torch.float32):
    """-> (h_in, h_post, h_res, inv_rms, h_mix, h_pre)."""
    out = stage_fwd(
        x=x,
        phi=phi,
        alpha=alpha,
        bias=bias,
        gamma=gamma,
        norm_eps=norm_eps,
        hc_eps=hc_eps,
        compute_dtype=compute_dtype,
    )
    return tuple(out[k] for k in ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"))


def mhc_pre_backward(
    x,
    phi,
    alpha,
    dh_in,
    dh_post,
    dh_res,
    inv_rms,
    h_mix,
    h_pre,
    h_post,
    gamma=None,
    *,
    hc_eps=1e-6,
    grad_x_post=None,
    compute_dtype=torch.float32,
    return_intermediates=False,
):
    """-> (dx, dphi, dalpha, dbias, dgamma) [, dict of every named intermediate].

    dgamma is None when gamma is None.
    """
    cd = compute_dtype
    t = stage_dh_mix(
        x=x,
        phi=phi,
        alpha=alpha,
        dh_in=dh_in,
        dh_post=dh_post,
        dh_res=dh_res,
        inv_rms=inv_rms,
        h_mix=h_mix,
        h_pre=h_pre,
        h_post=h_post,
        gamma=gamma,
        hc_eps=hc_eps,
        compute_dtype=cd,
    )
    t |= stage_dx(
        x=x,
        dvecX_mm=t["dvecX_mm"],
        dinv_rms=t["dinv_rms"],
        inv_rms=inv_rms,
        h_pre=h_pre,
        dh_in=dh_in,
        gamma=gamma,
        grad_x_post=grad_x_post,
        compute_dtype=cd,
    )
    t |= stage_dparams(
        x=x,
        dh_pre2=t["dh_pre2"],
        dh_post2=t["dh_post2"],
        dh_res=dh_res,
        dh_mix=t["dh_mix"],
        h_mix=h_mix,
        inv_rms=inv_rms,
        gamma=gamma,
        compute_dtype=cd,
    )
    t["dgamma"] = None if gamma is None else stage_dgamma(x=x, dvecX_mm=t["dvecX_mm"], compute_dtype=cd)["dgamma"]
    outs = tuple(t[k] for k in ("dx", "dphi", "dalpha", "dbias", "dgamma"))
    return (outs, t) if return_intermediates else outs


def mhc_pre_delayed_forward(
    x, phi, alpha, bias, gamma=None, h_pre_prev=None, *, norm_eps=1e-6, hc_eps=1e-6, compute_dtype=torch.float32
):
    """DeepSeek-V4.1's delayed pre -> (h_in, h_post, h_res, h_pre, inv_rms, h_mix): mhc_pre's outputs,
    with h_in = sum_i h_pre_prev[i] * x[i] (x[0] when h_pre_prev is None) and h_pre returned for the
    next sublayer."""
    out = stage_fwd(x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, h_pre_prev=h_pre_prev, delayed=True,
                    norm_eps=norm_eps, hc_eps=hc_eps, compute_dtype=compute_dtype)  # fmt: skip
    return tuple(out[k] for k in ("h_in", "h_post", "h_res", "h_pre", "inv_rms", "h_mix"))


def mhc_pre_delayed_backward(
    x, phi, alpha, dh_in, dh_post, dh_res, dh_pre, inv_rms, h_mix, h_pre, h_post, gamma=None, h_pre_prev=None, *,
    hc_eps=1e-6, grad_x_post=None, compute_dtype=torch.float32,
):  # fmt: skip
    """-> (dx, dphi, dalpha, dbias, dgamma, dh_pre_prev): the delayed pre's gradients. dh_pre is the
    gradient of this h_pre (None: zero); dgamma is None without gamma, dh_pre_prev without h_pre_prev."""
    cd = compute_dtype
    n = x.shape[-2]
    t = stage_dh_mix(x=x, phi=phi, alpha=alpha, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, inv_rms=inv_rms,
                     h_mix=h_mix, h_pre=h_pre, h_post=h_post, gamma=gamma, dh_pre=dh_pre, delayed=True,
                     hc_eps=hc_eps, compute_dtype=cd)  # fmt: skip
    coll = collapse_coefficients(h_pre, h_pre_prev, True, n, cd)
    t |= stage_dx(x=x, dvecX_mm=t["dvecX_mm"], dinv_rms=t["dinv_rms"], inv_rms=inv_rms, h_pre=coll, dh_in=dh_in,
                  gamma=gamma, grad_x_post=grad_x_post, compute_dtype=cd)  # fmt: skip
    t |= stage_dparams(x=x, dh_pre2=t["dh_pre2"], dh_post2=t["dh_post2"], dh_res=dh_res, dh_mix=t["dh_mix"],
                       h_mix=h_mix, inv_rms=inv_rms, gamma=gamma, compute_dtype=cd)  # fmt: skip
    dgamma = None if gamma is None else stage_dgamma(x=x, dvecX_mm=t["dvecX_mm"], compute_dtype=cd)["dgamma"]
    dh_pre_prev = None if h_pre_prev is None else t["dh_pre_prev"]
    return t["dx"], t["dphi"], t["dalpha"], t["dbias"], dgamma, dh_pre_prev


def stage_pre_bwd(
    *, x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma=None, grad_x_post=None,
    hc_eps=1e-6, compute_dtype=torch.float32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The composite stage pre_bwd: dh_mix -> dx -> dparams -> dgamma in one call, every named tensor of
    the four (dgamma None without gamma)."""
    _, t = mhc_pre_backward(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma,
                            hc_eps=hc_eps, grad_x_post=grad_x_post, compute_dtype=compute_dtype,
                            return_intermediates=True)  # fmt: skip
    return t


# mhc_pre's stages: the op they belong to, the named tensors each one reads and writes, the scalar options
# it takes, and its golden implementation. Outputs are the ones a kernel must produce; the golden may
# return more (dh_mix_tmp, dvecX_inv, dvecX_hin, G) for inspection. pre_bwd is a composite: it stands for
# its parts (the backward as one stage, what training runs: kernels/fused_bwd.py on Triton).
STAGE_IO = {
    "pre_fwd": {
        "op": "mhc_pre",
        "inputs": ("x", "phi", "alpha", "bias", "gamma"),
        "options": ("norm_eps", "hc_eps"),
        "outputs": ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"),
        "golden": stage_fwd,
    },
    "dh_mix": {
        "op": "mhc_pre",
        "inputs": ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma"),
        "options": ("hc_eps",),
        "outputs": ("dh_pre", "dh_pre2", "dh_post2", "dh_mix", "dinv_rms", "dvecX_mm"),
        "golden": stage_dh_mix,
    },
    "dx": {
        "op": "mhc_pre",
        "inputs": ("x", "dvecX_mm", "dinv_rms", "inv_rms", "h_pre", "dh_in", "gamma", "grad_x_post"),
        "options": (),
        "outputs": ("dx",),
        "golden": stage_dx,
    },
    "dparams": {
        "op": "mhc_pre",
        "inputs": ("x", "dh_pre2", "dh_post2", "dh_res", "dh_mix", "h_mix", "inv_rms", "gamma"),
        "options": (),
        "outputs": ("dphi", "dalpha", "dbias"),
        "golden": stage_dparams,
    },
    "dgamma": {
        "op": "mhc_pre",
        "inputs": ("x", "dvecX_mm"),
        "options": (),
        "outputs": ("dgamma",),
        "golden": stage_dgamma,
    },
    "pre_bwd": {
        "op": "mhc_pre",
        "inputs": ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma",
                   "grad_x_post"),  # fmt: skip
        "options": ("hc_eps",),
        "outputs": ("dx", "dphi", "dalpha", "dbias", "dgamma"),
        "golden": stage_pre_bwd,
        "parts": ("dh_mix", "dx", "dparams", "dgamma"),
    },
}
