"""A first-order estimate of a run's memory, checked before anything is built (docs/train.md, "Memory").

Per process, in bytes:

- parameters, gradients and AdamW's two moments in fp32: 16 bytes per parameter (FSDP shards them:
  divided by the world size), plus 2 per parameter for autocast's bf16 weight copies under bf16;
- activations, what autograd keeps from the forward for the backward, per token of the process's
  ``batch / world`` rows of ``seq`` bytes: each transformer layer 18·D values (attention and MLP with
  their norms) and, with mHC, 3·n·D stream values (the [n, D] streams its two blocks save) and 8·n²
  fp32 values (the blocks' mixing coefficients); the head 3·D values and 512 fp32 values (logits and
  their softmax). Values are 4 bytes in fp32 and 2 in bf16;
- the backward's working set: one more layer's activations (the gradients of a layer's activations
  are alive on top of the saved ones).

On CPU the saved term is an upper bound of the bytes autograd saves, within 30 % of them
(tests/train/test_memory.py measures them with ``saved_tensors_hooks``). Not counted: the runtime
itself (torch and the interpreter, about 0.4 GiB of resident memory on CPU), the corpus, allocator
fragmentation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GiB = 2**30


@dataclass(frozen=True)
class Estimate:
    saved: int  # bytes: the activations autograd saves
    working: int  # bytes: the backward's working set, one layer's activations
    parameters: int  # bytes: parameters, gradients, optimizer state (and bf16 copies)

    @property
    def activations(self) -> int:
        return self.saved + self.working

    @property
    def total(self) -> int:
        return self.activations + self.parameters


def estimate(
    *,
    layers: int,
    dim: int,
    n: int,
    seq: int,
    batch: int,
    mhc: bool,
    bf16: bool,
    params: int,
    world: int = 1,
    sharded: bool = False,
) -> Estimate:
    """One process's memory (module docstring); ``params`` is the model's parameter count, ``batch``
    the global batch (each process holds batch / world rows), ``sharded`` FSDP's sharded parameters."""
    a = 2 if bf16 else 4  # bytes of an activation value
    per_layer = 18 * dim * a + (3 * n * dim * a + 8 * n * n * 4 if mhc else 0)
    head = 3 * dim * a + 512 * 4
    tokens = batch // world * seq
    per_param = 16 + (2 if bf16 else 0)
    return Estimate(
        saved=tokens * (layers * per_layer + head),
        working=tokens * per_layer,
        parameters=params * per_param // (world if sharded else 1),
    )


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit leaves (containers), or None without a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)


def available(device: torch.device) -> tuple[int, str]:
    """-> (bytes, what was measured): free memory of a CUDA device, else the system's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory of {torch.cuda.get_device_name(device)} (torch.cuda.mem_get_info)"
    candidates = [(v, s) for v, s in ((_meminfo_available(), "MemAvailable"), (_cgroup_available(), "cgroup limit"))]
    candidates = [(v, s) for v, s in candidates if v is not None]
    if not candidates:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "system RAM (physical pages)"
    value, source = min(candidates)
    return value, f"available system RAM ({source})"
