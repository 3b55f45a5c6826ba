"""A small byte-level GPT whose residual is mHC.

Every attention and every MLP block is a branch ``F: [B, S, D] -> [B, S, D]`` wrapped by
``HyperConnection`` (two per transformer layer, ``layer_index`` counts blocks, so the identity preset's
home stream ``k = layer_index mod n`` rotates over the streams). The embedding is expanded into ``n``
streams once, ``[B, S, D] -> [B, S, n, D]``, and the streams are summed once before the final norm and
the head. With ``residual="plain"`` the same modules run with ``disable=True``: ``h + F(h)`` on
``[B, S, D]``, the A/B baseline.

Choices: pre-norm branches (RMSNorm inside F, so mhc_pre sees the raw streams), learned positional
embeddings, causal attention through ``scaled_dot_product_attention``, GELU MLP of width 4D, no
dropout, no biases, an untied head (tying would make the embedding and the head one FSDP parameter
used at both ends of the model). Linear and embedding weights are N(0, 0.02), the output projection
of each branch N(0, 0.02 / sqrt(2 · layers)) (GPT-2); the mHC parameters keep the library's preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mhc_ops.nn import HyperConnection, expand_streams, reduce_streams, stack_forward

from .data import VOCAB


@dataclass(frozen=True)
class ModelConfig:
    layers: int
    dim: int
    heads: int
    seq: int
    n: int
    residual: str  # "mhc" | "plain"
    backend: str = "auto"
    stages: dict | None = None
    gamma: bool = False  # a learned gamma [n, D] in mhc_pre
    recompute: bool = False
    delayed: bool = False  # DeepSeek-V4.1's delayed pre: each block collapses with the previous block's h_pre


def _init_linear(layer: nn.Linear, std: float) -> nn.Linear:
    nn.init.normal_(layer.weight, std=std)
    return layer


class Attention(nn.Module):
    """Pre-norm causal self-attention, [B, S, D] -> [B, S, D]."""

    def __init__(self, dim: int, heads: int, out_std: float):
        super().__init__()
        self.heads = heads
        self.norm = nn.RMSNorm(dim)
        self.qkv = _init_linear(nn.Linear(dim, 3 * dim, bias=False), 0.02)
        self.proj = _init_linear(nn.Linear(dim, dim, bias=False), out_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, S, D = h.shape
        # [B, S, 3D] -> 3 × [B, heads, S, D / heads]
        q, k, v = self.qkv(self.norm(h)).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, heads, S, D / heads]
        return self.proj(a.transpose(1, 2).reshape(B, S, D))


class MLP(nn.Module):
    """Pre-norm GELU MLP of width 4D, [B, S, D] -> [B, S, D]."""

    def __init__(self, dim: int, out_std: float):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.fc = _init_linear(nn.Linear(dim, 4 * dim, bias=False), 0.02)
        self.proj = _init_linear(nn.Linear(4 * dim, dim, bias=False), out_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(self.norm(h))))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.mhc = cfg.residual == "mhc"
        out_std = 0.02 / math.sqrt(2 * cfg.layers)
        self.tok = nn.Embedding(VOCAB, cfg.dim)
        self.pos = nn.Embedding(cfg.seq, cfg.dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        branches = [
            b for _ in range(cfg.layers) for b in (Attention(cfg.dim, cfg.heads, out_std), MLP(cfg.dim, out_std))
        ]
        # blocks[2l] wraps layer l's attention, blocks[2l + 1] its MLP.
        self.blocks = nn.ModuleList(
            HyperConnection(
                cfg.dim,
                cfg.n,
                branch,
                layer_index=i,
                recompute=cfg.recompute,
                disable=not self.mhc,
                stages=cfg.stages,
                backend=cfg.backend,
                use_gamma=cfg.gamma,
                delayed=cfg.delayed and self.mhc,
            )
            for i, branch in enumerate(branches)
        )
        self.norm = nn.RMSNorm(cfg.dim)
        self.head = _init_linear(nn.Linear(cfg.dim, VOCAB, bias=False), 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, S] int64 -> logits [B, S, 256] fp32."""
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))  # [B, S, D]
        if torch.is_autocast_enabled(h.device.type):
            # The streams are carried in the autocast dtype (bf16), like every other activation.
            h = h.to(torch.get_autocast_dtype(h.device.type))
        x = expand_streams(h, self.cfg.n) if self.mhc else h  # [B, S, n, D] (mhc) or [B, S, D]
        # the blocks one after another (with --hc delayed, each collapses with the previous one's h_pre; at
        # inference on a few tokens, each boundary in one launch: mhc_ops.nn.stack_forward)
        x = stack_forward(self.blocks, x, delayed=self.cfg.delayed and self.mhc)
        h = reduce_streams(x) if self.mhc else x  # [B, S, D]
        return self.head(self.norm(h)).float()


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross entropy in nats; logits [B, S, 256], targets [B, S]."""
    return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))


def branch_modules(model: nn.Module) -> list[nn.Module]:
    """The attention and MLP branches (FSDP shards each as its own unit, in bf16 on CUDA)."""
    return [m for m in model.modules() if isinstance(m, Attention | MLP)]


def hyper_connections(model: nn.Module) -> list[HyperConnection]:
    return [m for m in model.modules() if isinstance(m, HyperConnection)]


@torch.no_grad()
def mhc_health(model: nn.Module) -> dict:
    """mHC health from the Sinkhorn outputs of the last forward (``last_h_res`` `[..., n, n]` per block):
    ``sinkhorn_max_dev``, the largest deviation of a row or column sum from 1 over all tokens and blocks;
    ``h_res_gain``, the largest absolute row sum of the product, in block order, of every block's
    token-averaged h_res (how much the residual path alone can amplify a stream; 1 for doubly
    stochastic matrices). Both None for the plain residual or before a forward."""
    hs = [getattr(m, "last_h_res", None) for m in hyper_connections(model)]
    if not hs or any(h is None for h in hs):
        return {"sinkhorn_max_dev": None, "h_res_gain": None}
    n = hs[0].shape[-1]
    dev = max(max((h.sum(-1) - 1).abs().max().item(), (h.sum(-2) - 1).abs().max().item()) for h in hs)
    # out[j] = Σ_i h_res[i, j] · x[i]: a row vector of streams times h_res, so the blocks compose as
    # H_0 @ H_1 @ ... in block order.
    prod = torch.eye(n, dtype=torch.float64, device=hs[0].device)
    for h in hs:
        prod = prod @ h.reshape(-1, n, n).double().mean(0)
    return {"sinkhorn_max_dev": dev, "h_res_gain": prod.abs().sum(-1).max().item()}
