"""Every golden stage of every op, in one table: the registry the fixtures, the composer and the tests read.

``STAGE_IO[name]`` gives the op a stage belongs to, the named tensors it reads and writes, its scalar
options and its golden implementation (and, for a composite, its parts); ``OP_STAGES[op]`` lists an
op's stages in chain order.
"""

from __future__ import annotations

from .mhc_post import STAGE_IO as _POST_STAGE_IO
from .mhc_pre import STAGE_IO as _PRE_STAGE_IO
from .sinkhorn import STAGE_IO as _SINKHORN_STAGE_IO

OPS = ("mhc_pre", "sinkhorn", "mhc_post")
STAGE_IO = {**_PRE_STAGE_IO, **_SINKHORN_STAGE_IO, **_POST_STAGE_IO}
STAGE_NAMES = tuple(STAGE_IO)
# A composite stage stands for its parts (pre_bwd: dh_mix, dx, dparams, dgamma): one kernel module that does
# their work at once, with the same inputs and outputs as the parts' chain. Name -> its parts.
COMPOSITES = {name: io["parts"] for name, io in STAGE_IO.items() if "parts" in io}
# An op's stages in chain order, parts only (a composite replaces its parts in a chain, never follows them).
OP_STAGES = {op: tuple(s for s, io in STAGE_IO.items() if io["op"] == op and s not in COMPOSITES) for op in OPS}
PRE_STAGE_NAMES = OP_STAGES["mhc_pre"]


def composites_of(stage: str) -> tuple[str, ...]:
    """The composite stages that stand for ``stage`` (pre_bwd for dx), and itself."""
    return (stage, *(c for c, parts in COMPOSITES.items() if stage in parts))
