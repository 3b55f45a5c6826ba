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


@pytest.mark.parametrize(("row", "flag", "grid", "expected"), [
    ("seam", "--seam-grid", "block_t=16,32;block_d=16",
     ["seam", "seam[block_t=16, block_d=16]", "seam[block_t=32, block_d=16]"]),
    ("delayed_fwd", "--delayed-grid", "block_d=16,32;wide=True",
     ["delayed_fwd", "delayed_fwd[block_d=16, wide=True]", "delayed_fwd[block_d=32, wide=True]"]),
    ("delayed_bwd", "--delayed-bwd-grid", "loop_stages=None,2",
     ["delayed_bwd", "delayed_bwd[loop_stages=None]", "delayed_bwd[loop_stages=2]"]),
])  # fmt: skip
def test_grid_adds_a_row_per_launch_option(row, flag, grid, expected, capsys):
    assert delayed.main(["--shapes", "3x4x64", "--rows", row, flag, grid, "--quick", "--device", "cpu"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 3x4x64")]
    assert [r.split(" | ")[1] for r in rows] == expected
    assert all("| ok |" in r for r in rows)


@pytest.mark.parametrize("argv", [["--rows", "seam,nope"], ["--rows", ""], ["--seam-grid", "block_t"],
                                  ["--delayed-grid", "wide"], ["--delayed-bwd-grid", "loop_stages"]])  # fmt: skip
def test_bad_rows_and_grid_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        delayed.main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and argv[0] in err


def test_seam_backward_floor_drops_dx_next():
    """The boundary's backward: the unfused pair writes dx(l+1) and reads it back (2·s·nD a token more)."""
    T, n, D, s = 7, 4, 4096, 2
    fused, unfused = delayed.floor_bytes("seam_bwd", T, n, D, s)
    assert unfused - fused == T * 2 * s * n * D
