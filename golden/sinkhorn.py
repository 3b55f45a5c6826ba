"""Golden PyTorch reference of the Sinkhorn-Knopp projection (DeepSeek V4's variant), forward and backward.

Per token, logits ``L`` ``[n, n]`` (any leading dims: ``[B, S, n, n]`` or ``[T, n, n]``)::

    P = softmax(L, dim=-1) + eps          (row softmax, max-subtracted)
    P = P / (colsum(P) + eps)
    repeat iters - 1 times:
        P = P / (rowsum(P) + eps)
        P = P / (colsum(P) + eps)

The backward is the exact reverse-mode gradient of this finite iteration, written by hand step by step
(docs/sinkhorn.md derives it): it is not the implicit / fixed-point adjoint of the converged limit, which
is another function until the iteration has converged (it has not for near-identity logits). All
arithmetic runs in ``compute_dtype``; P comes back in it, dlogits in logits' dtype.
"""

from __future__ import annotations

import torch

__all__ = [
    "STAGE_IO",
    "sinkhorn_backward",
    "sinkhorn_forward",
    "stage_sinkhorn_bwd",
    "stage_sinkhorn_fwd",
]

ROW, COL = -1, -2  # the dim a pass sums over: rowsum(P) sums over j (dim -1), colsum(P) over i (dim -2)


def _check(logits: torch.Tensor, iters: int) -> None:
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits: expected shape [..., n, n] (square last two dims), got {tuple(logits.shape)}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: expected an int >= 1, got {iters!r}")


def _normalise(P: torch.Tensor, dim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: -> (Q = P / (sum of P over dim + eps), that divisor, keepdim so it broadcasts)."""
    d = P.sum(dim=dim, keepdim=True) + eps
    return P / d, d


def _normalise_adjoint(dQ: torch.Tensor, Q: torch.Tensor, d: torch.Tensor, dim: int) -> torch.Tensor:
    """Gradient of P from the gradient of Q = P / d, d = sum_dim(P) + eps:
    dP = (dQ - sum_dim(dQ * Q)) / d (the sum taken along the pass's dim, broadcast back over it)."""
    return (dQ - (dQ * Q).sum(dim=dim, keepdim=True)) / d


def _forward_steps(logits, iters, eps, cd):
    """-> (S = the row softmax, [(dim, Q, d) of every pass in order]); the last pass's Q is P."""
    S = torch.softmax(logits.to(cd), dim=-1)
    P, d = _normalise(S + eps, COL, eps)
    steps = [(COL, P, d)]
    for _ in range(iters - 1):
        for dim in (ROW, COL):
            P, d = _normalise(P, dim, eps)
            steps.append((dim, P, d))
    return S, steps


def stage_sinkhorn_fwd(*, logits, iters=20, eps=1e-6, compute_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """P [..., n, n] in compute_dtype: softmax + eps, a column pass, then iters - 1 row/column passes."""
    _check(logits, iters)
    _, steps = _forward_steps(logits, iters, eps, compute_dtype)
    return {"P": steps[-1][1]}


def stage_sinkhorn_bwd(*, logits, dP, iters=20, eps=1e-6, compute_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """dlogits [..., n, n] in logits' dtype: the forward recomputed keeping each pass's output and
    divisor, then each pass's adjoint in reverse order, then the softmax's."""
    _check(logits, iters)
    if dP.shape != logits.shape:
        raise ValueError(f"dP: expected shape {list(logits.shape)} (logits' shape), got {list(dP.shape)}")
    S, steps = _forward_steps(logits, iters, eps, compute_dtype)
    G = dP.to(compute_dtype)  # gradient of the current pass's output Q
    for dim, Q, d in reversed(steps):
        G = _normalise_adjoint(G, Q, d, dim)
    # P0 = S + eps: dS = G. Row softmax: dL = S * (dS - sum_j dS * S).
    dlogits = S * (G - (G * S).sum(dim=-1, keepdim=True))
    return {"dlogits": dlogits.to(logits.dtype)}


def sinkhorn_forward(logits, iters=20, eps=1e-6, *, compute_dtype=torch.float32) -> torch.Tensor:
    """-> P, shape of logits, in compute_dtype."""
    return stage_sinkhorn_fwd(logits=logits, iters=iters, eps=eps, compute_dtype=compute_dtype)["P"]


def sinkhorn_backward(logits, dP, iters=20, eps=1e-6, *, compute_dtype=torch.float32) -> torch.Tensor:
    """-> dlogits, shape and dtype of logits."""
    return stage_sinkhorn_bwd(logits=logits, dP=dP, iters=iters, eps=eps, compute_dtype=compute_dtype)["dlogits"]


# The two stages of the sinkhorn op, in the registry's format (golden/registry.py merges them).
STAGE_IO = {
    "sinkhorn_fwd": {
        "op": "sinkhorn",
        "inputs": ("logits",),
        "options": ("iters", "eps"),
        "outputs": ("P",),
        "golden": stage_sinkhorn_fwd,
    },
    "sinkhorn_bwd": {
        "op": "sinkhorn",
        "inputs": ("logits", "dP"),
        "options": ("iters", "eps"),
        "outputs": ("dlogits",),
        "golden": stage_sinkhorn_bwd,
    },
}
