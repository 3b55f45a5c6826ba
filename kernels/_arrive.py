"""Arrival counters for kernels whose last program of a token block finishes it (kernels/decode.py, the
fused backward's pass A split over columns in kernels/fused_bwd.py):
one int32 per token block, incremented with acq_rel at GPU scope by each program of the block and set
back to 0 by the last one, so they are all 0 between launches and a CUDA-graph replay needs no memset.

Eager launches share a cached buffer per (device, stream): launches on one stream run one after
another, so no two use a counter at once. A captured graph keeps the buffer of its capture stream:
two graphs captured on one stream must not replay concurrently on two streams. Inside a registered
op's body (torch.compile traces it, Inductor allocates) the counters are a fresh zeroed tensor of the
graph (one memset).

Signal flags (signal_flags, kernels/decode.py's collapse "wait"): one int32 per token block whose parity the
last program flips to release the others, which read it before arriving and wait for the other parity; its
value is never reset, so it needs no particular value between launches. A buffer of their own: the
counters' users rely on zeros."""

from __future__ import annotations

import torch

from ._launch import in_op_body

_COUNTERS: dict[tuple, torch.Tensor] = {}
_FLAGS: dict[tuple, torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers a captured graph may still use: kept alive


def arrival_counters(device: torch.device, blocks: int) -> torch.Tensor:
    """At least ``blocks`` int32 counters on device, all 0 when a launch starts."""
    return _cached(_COUNTERS, device, blocks)


def signal_flags(device: torch.device, blocks: int) -> torch.Tensor:
    """At least ``blocks`` int32 flags on device, of any value (their parity is read, then flipped)."""
    return _cached(_FLAGS, device, blocks)


def _cached(cache: dict, device: torch.device, blocks: int) -> torch.Tensor:
    if in_op_body():
        return torch.zeros(blocks, device=device, dtype=torch.int32)
    key = (device, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    c = cache.get(key)
    if c is None or c.numel() < blocks:
        if c is not None:
            _RETIRED.append(c)
        c = cache[key] = torch.zeros(max(blocks, 64), device=device, dtype=torch.int32)
    return c
