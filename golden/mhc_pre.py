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
]


def _dims(x: torch.Tensor) -> tuple[tuple[int, ...], int, int]:
    if x.dim() not in (3, 4):
        raise ValueError(f"x: expected [B, S, n, D] or [T, n, D], got shape {tuple(x.shape)}")
    return tuple(x.shape[:-2]), x.shape[-2], x.shape[-1]


def _gamma_flat(gamma: torch.Tensor | None, n: int, D: int, cd: torch.dtype) -> torch.Tensor | None:
    # [n, D] -> [nD] in the compute dtype; None means gamma == 1 everywhere.
    return None if gamma is None else gamma.reshape(n * D).to(cd)


def stage_fwd(
    *, x, phi, alpha, bias, gamma=None, norm_eps=1e-6, hc_eps=1e-6, compute_dtype=torch.float32
) -> dict[str, torch.Tensor]:
    """The forward: h_mix and inv_rms from x, the coefficients, h_in."""
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
    h_in = (h_pre[:, :, None] * v.view(-1, n, D)).sum(dim=1)  # [T, D]
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
    hc_eps=1e-6,
    compute_dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """Gradients of the coefficients (dh_mix) and of v*gamma through the GEMM (dvecX_mm)."""
    lead, n, D = _dims(x)
    cd = compute_dtype
    v = x.reshape(-1, n * D).to(cd)
    a = alpha.to(cd)
    dh_in_t = dh_in.reshape(-1, D).to(cd)
    dh_pre = torch.einsum("tid,td->ti", v.view(-1, n, D), dh_in_t)  # [T, n]
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
    return {
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
    """dx = dvecX_mm*gamma + dvecX_inv + dvecX_hin (+ grad_x_post), stored in x's dtype."""
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


# The five stages of mhc_pre's staged plan: the op they belong to, the named tensors each one reads
# and writes, the scalar options it takes, and its golden implementation. Outputs are the ones a kernel must produce;
# the golden may return more (dh_mix_tmp, dvecX_inv, dvecX_hin, G) for inspection.
STAGE_IO = {
    "fwd": {
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
}
