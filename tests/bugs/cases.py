"""Cases, block sizes and thresholds of the bug regression tests (tests/bugs), in one place.

The historical bugs showed at B=2, S=64, n=4, D=128; these cases keep the traits that let each bug
show (several streams, rows wider than a block, inv_rms far from 1, many programs per parameter
gradient) at sizes the interpreter runs in a fraction of a second.
"""

from mhc_ops.golden import Case

# dx grid: several streams (n = 1 cannot show a grid that misses streams), odd D, every x dtype.
DX_CASES = [
    Case(lead=(2, 8), n=4, D=24, dtype="bfloat16", seed=401),
    Case(lead=(13,), n=3, D=17, dtype="float16", seed=402, grad_x_post=True),
    Case(lead=(3, 2), n=6, D=9, dtype="float32", seed=403, gamma=False),
]
DX_BLOCKS = [(1, 8), (16, 64)]  # (block_t, block_d)

# Block over D: a row of 72 is 5, 3 and 2 blocks of 16, 32 and 64, the last one partial.
ROW_CASE = Case(lead=(2, 8), n=4, D=72, dtype="bfloat16", seed=411)
ROW_BLOCKS_D = (16, 32, 64)
# The historical block: next_power_of_2(min(D, nD, O)) = 32 elements of each row.
HISTORICAL_ROW_BLOCK = 32

# Missing inv_rms: x scaled so that inv_rms is near 1/8 or near 8 for every token.
RMS_CASES = [
    Case(lead=(2, 8), n=4, D=24, dtype="bfloat16", seed=421, x_scale=8.0),
    Case(lead=(16,), n=3, D=20, dtype="float16", seed=422, x_scale=0.125),
]
INV_RMS_FAR = 4.0  # each token's inv_rms is below 1/INV_RMS_FAR or above INV_RMS_FAR

# Repeated accumulation: 100 tokens are 7 blocks of 16 feeding each parameter gradient; splits of the
# token range beyond the 7 blocks leave idle programs that must still write their (zero) partials.
ACCUM_CASE = Case(lead=(100,), n=4, D=20, dtype="bfloat16", seed=431)
ACCUM_BLOCK_T = 16
ACCUM_SPLITS = (1, 3, 16)
# BLOCK_N of the historical loop over (i, j) blocks of the n x n matrix: (4 / 2)^2 = 4 trips at n = 4.
HISTORICAL_RES_BLOCK = 2

# fp32 -> bf16 rounding: random finite values over the whole exponent range, plus exact ties.
ROUNDING_VALUES = 4096
ROUNDING_SEED = 441

# Chained tensor-core accumulators: a running sum carried through many split products. fwd chains it
# over the D chunks of each token (4 * 640 / 16 = 160 chunks with block_d = 16), dparams over the
# token blocks of each program (2048 / 16 = 128 with one split). x scaled by 8: a large h_mix.
CHAIN_FWD_CASE = Case(lead=(32,), n=4, D=640, dtype="bfloat16", seed=451, x_scale=8.0)
CHAIN_FWD_LAUNCH = {"block_d": 16}
CHAIN_DPARAMS_CASE = Case(lead=(2048,), n=4, D=16, dtype="bfloat16", seed=452, x_scale=8.0)
CHAIN_DPARAMS_LAUNCH = {"block_t": 16, "block_d": 16, "splits": 1}
# The shape at which the H100 showed the bug (h_mix err 8.9e-5 against a bound of 3.1e-6); GPU only.
CHAIN_GPU_CASE = Case(lead=(4096,), n=4, D=7168, dtype="bfloat16", seed=453, x_scale=8.0)
# The mutant h_mix kernel's tile: a program per 64 tokens, n*D in chunks of 128 (fwd's tile at n = 4).
CHAIN_BLOCK_T = 64
CHAIN_BLOCK_K = 128

# Partials reduced in fp32 one after the other: M columns of standard normal partials, plus +c and -c
# in half the rows each (random rows), so the sum (~sqrt(P)) is far below the partials (~c).
PARTIALS_ROWS = (64, 4096)  # the running sum's error grows with P: right at 64, wrong at 4096
PARTIALS_COLS = 24
PARTIALS_C = 64.0
PARTIALS_SEED = 461
PARTIALS_GROWTH = 2.0  # least growth of the running sum's error from 64 to 4096 rows (sqrt(64) = 8 expected)
# dparams end to end with many partials: 2048 tokens in blocks of 16 are 128 partials per sum.
PARTIALS_DPARAMS_CASE = Case(lead=(2048,), n=2, D=8, dtype="bfloat16", seed=462)
PARTIALS_DPARAMS_BLOCK_T = 16
