"""benchmarks/delayed.py on the CPU (the interpreter): every row passes the accuracy rule, and the floors
follow the contract's tables."""

import pytest

from benchmarks import delayed
from tests.helpers import INTERPRETING

pytestmark = pytest.mark.skipif(not INTERPRETING, reason="the CPU smoke test runs the kernels through the interpreter")


def test_delayed_benchmark_rows_pass_the_accuracy_rule(capsys):
    assert delayed.main(["--shapes", "3x4x64,2x3x40", "--quick", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert table.count("| ok |") == 2 * len(delayed.ROWS) and "FAIL" not in table


def test_seam_floor_is_below_the_unfused_boundary():
    T, n, D, s = 7, 4, 4096, 2
    seam, unfused = delayed.floor_bytes("boundary", T, n, D, s)
    assert seam == T * (2 * s * n * D + 2 * s * D + 4 * (3 * n * n + 5 * n + 1))
    assert seam < unfused  # the seam saves one read and one write of x(l+1) per token
