"""docs/adding-an-op.md, checked for every op the golden registry lists: its golden module, Triton
stages, route, op declaration, stage-marked tests and math doc."""

import pathlib
import re

import pytest

from mhc_ops import ops
from mhc_ops.golden.registry import OP_STAGES, OPS
from mhc_ops.stages import STAGES

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKED = {
    m
    for p in (ROOT / "tests").rglob("test_*.py")
    for m in re.findall(r"pytest\.mark\.stage\(\"(\w+)\"\)", p.read_text())
}


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_each_piece_of_the_checklist(op):
    stages = OP_STAGES[op]
    assert stages, f"{op}: no stages in golden/registry.py"
    for stage in stages:
        assert STAGES[stage].triton is not None and STAGES[stage].golden is not None, stage
        assert stage in MARKED, f"{stage}: no test carries pytest.mark.stage({stage!r})"
    assert op in ops.OPS and isinstance(ops.OPS[op], ops.Op), f"{op}: no Op declared in mhc_ops/ops.py"
    assert callable(getattr(ops, op, None)), f"{op}: no public function mhc_ops.ops.{op}"
    assert f"## {op}" in (ROOT / "docs" / "math.md").read_text(), f"{op}: no section in docs/math.md"


def test_the_checklist_names_files_that_exist():
    text = (ROOT / "docs" / "adding-an-op.md").read_text()
    for path in ("golden/registry.py", "mhc_ops/_validate.py", "stages/__init__.py", "mhc_ops/_impl.py",
                 "mhc_ops/ops.py", "mhc_ops/_opspec.py", "kernels/_common.py", "tests/cases.py", "docs/math.md"):  # fmt: skip
        assert path in text and (ROOT / path).exists(), path
