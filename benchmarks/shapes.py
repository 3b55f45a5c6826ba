"""The benchmark's shapes and input options, in one place.

Every shape runs in the BSND layout with bf16 x, fp32 phi and a gamma. A shape's T tokens are split
into sequences of SEQ_LEN tokens, ``lead = (B, S) = (T // SEQ_LEN, SEQ_LEN)``, when T is a multiple
of SEQ_LEN, and form one sequence (B = 1, S = T) otherwise: the kernels see only T, so the split
changes nothing but the leading dims.

The host-time rows (benchmarks/host.py) run at their own shapes: T = 1, where the GPU is never the
bottleneck, and T = 4096, where a training step should be GPU-bound.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import torch

SEQ_LEN = 4096
X_DTYPE = "bfloat16"
GAMMA = True
SEED = 0


@dataclass(frozen=True)
class Shape:
    T: int
    n: int
    D: int

    @property
    def lead(self) -> tuple[int, int]:
        S = SEQ_LEN if self.T % SEQ_LEN == 0 else self.T
        return self.T // S, S

    @property
    def label(self) -> str:
        return f"{self.T}x{self.n}x{self.D}"


DEFAULT_SHAPES = (
    Shape(1024, 4, 4096),
    *(Shape(T, 4, D) for T in (4096, 16384) for D in (2560, 4096, 7168)),
    Shape(8192, 6, 4096),
    Shape(8192, 8, 2048),
)
# Named sets for --shapes and --host; "tiny" and "host-tiny" are the CPU smoke test (Triton kernels
# through the interpreter).
SHAPE_SETS = {
    "default": DEFAULT_SHAPES,
    "target": (Shape(16384, 4, 7168),),
    "tiny": (Shape(32, 4, 64),),
    "host": (Shape(1, 4, 4096), Shape(4096, 4, 4096)),
    "host-tiny": (Shape(1, 4, 64), Shape(32, 4, 64)),
}


def parse_shapes(text: str) -> list[Shape]:
    """Names of SHAPE_SETS or 'TxnxD' (e.g. '16384x4x7168'), comma separated, in order."""
    shapes: list[Shape] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item in SHAPE_SETS:
            shapes += SHAPE_SETS[item]
            continue
        m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", item)
        if m is None or min(map(int, m.groups())) < 1:
            raise ValueError(
                f"shape {item!r}: expected TxnxD with positive integers (e.g. 16384x4x7168) "
                f"or one of {', '.join(SHAPE_SETS)}"
            )
        shapes.append(Shape(*map(int, m.groups())))
    if not shapes:
        raise ValueError("--shapes: expected at least one shape")
    return list(dict.fromkeys(shapes))


def parsed_shapes(parser: argparse.ArgumentParser, text: str, option: str = "--shapes") -> list[Shape]:
    """parse_shapes for a command line: a bad value exits 2 with one line naming the option."""
    try:
        return parse_shapes(text)
    except ValueError as e:
        parser.error(f"{option}: {e}")


def parsed_subset(parser: argparse.ArgumentParser, option: str, text: str, allowed) -> tuple[str, ...]:
    """A comma-separated subset of allowed for a command line, in order, without repeats; anything else
    exits 2 with one line naming the option."""
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names or set(names) - set(allowed):
        parser.error(f"{option}: expected a comma-separated subset of {', '.join(allowed)}, got {','.join(names)!r}")
    return names


def parsed_device(parser: argparse.ArgumentParser, text: str, cpu_use: str) -> torch.device:
    """--device for a command line: cpu, or cuda[:i] (with its index) where a CUDA device exists;
    anything else exits 2 with one line. cpu_use: what --device cpu runs, for the message."""
    device = torch.device(text)
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device: expected cuda[:i] or cpu, got {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device cuda: no CUDA device here (--device cpu runs {cpu_use})")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device
