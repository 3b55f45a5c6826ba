"""benchmarks/decode.py and benchmarks/sinkhorn_tiles.py on the CPU (the interpreter): every row passes the accuracy rule."""

import pytest

from benchmarks import decode
from tests.helpers import INTERPRETING

pytestmark = pytest.mark.skipif(not INTERPRETING, reason="the CPU smoke test runs the kernels through the interpreter")


def test_decode_benchmark_rows_pass_the_accuracy_rule(capsys):
    assert decode.main(["--shapes", "3x4x64,2x3x40", "--quick", "--variants", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    # every row, sinkhorn_alone too; the variants whose collapse spins (a GPU's) n/a with the launcher's reason
    waits = sum(v.get("collapse") == "wait" for _, v in decode.VARIANTS)
    assert table.count("| ok |") == 2 * (len(decode.ROWS) + len(decode.VARIANTS) - waits + 1) and "FAIL" not in table
    assert table.count('| n/a |  |  |  |  | collapse: "wait" needs') == 2 * waits


def test_sinkhorn_tiles_benchmark_rows_pass_the_accuracy_rule(capsys):
    from benchmarks import sinkhorn_tiles

    assert sinkhorn_tiles.main(["--n", "3,8", "--T", "1,5", "--configs", "16x1,8x4", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    # per T: n = 3's default tile is 16x1 (one row for both) and 8x4; n = 8's default 8x1, 16x1 and 8x4
    assert table.count("| ok |") == 2 * (2 + 3) and table.count("(default)") == 2 * 2 and "FAIL" not in table


def test_decode_benchmark_rows_filter(capsys):
    """--rows keeps the rows whose name the expression finds, variants included."""
    assert decode.main(["--shapes", "2x3x40", "--quick", "--variants", "--rows", "^ops_plain$|collapse=launch,block_t=1]",
                        "--device", "cpu"]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if "| ok |" in line]
    assert [line.split(" | ")[1] for line in lines] == ["ops_plain", "decode_plain[collapse=launch,block_t=1]"]


@pytest.mark.parametrize("rows", ["(", "no_such_row"], ids=["bad-regex", "finds-nothing"])
def test_decode_benchmark_refuses_bad_rows(rows, capsys):
    with pytest.raises(SystemExit) as e:
        decode.main(["--shapes", "2x3x40", "--rows", rows, "--device", "cpu"])
    assert e.value.code == 2 and "--rows" in capsys.readouterr().err
