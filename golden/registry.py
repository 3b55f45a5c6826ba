"""Every golden stage of every op, in one table: the registry the fixtures, the composer and the tests read.

``STAGE_IO[name]`` gives the op a stage belongs to, the named tensors it reads and writes, its scalar
options and its golden implementation; ``OP_STAGES[op]`` lists an op's stages in chain order.
"""

from __future__ import annotations

from .mhc_post import STAGE_IO as _POST_STAGE_IO
from .mhc_pre import STAGE_IO as _PRE_STAGE_IO
from .sinkhorn import STAGE_IO as _SINKHORN_STAGE_IO

OPS = ("mhc_pre", "sinkhorn", "mhc_post")
STAGE_IO = {**_PRE_STAGE_IO, **_SINKHORN_STAGE_IO, **_POST_STAGE_IO}
STAGE_NAMES = tuple(STAGE_IO)
OP_STAGES = {op: tuple(s for s, io in STAGE_IO.items() if io["op"] == op) for op in OPS}
PRE_STAGE_NAMES = OP_STAGES["mhc_pre"]
