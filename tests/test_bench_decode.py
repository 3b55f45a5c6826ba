"""benchmarks/decode.py on the CPU (the interpreter): every row, variants included, passes the accuracy rule."""

import pytest

from benchmarks import decode
from tests.helpers import INTERPRETING

pytestmark = pytest.mark.skipif(not INTERPRETING, reason="the CPU smoke test runs the kernels through the interpreter")


def test_decode_benchmark_rows_pass_the_accuracy_rule(capsys):
    assert decode.main(["--shapes", "3x4x64,2x3x40", "--quick", "--variants", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    rows = len(decode.ROWS) + len(decode.VARIANTS) + 1  # and sinkhorn_alone
    assert table.count("| ok |") == 2 * rows and "FAIL" not in table
