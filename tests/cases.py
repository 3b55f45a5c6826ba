"""Shape lists and fixture cases of the test suite, in one place."""

import itertools

from mhc_ops.golden import Case

# Stream counts and hidden sizes that break assumptions: n = 1, odd n, n = 6; D odd, not a power of two.
GOLDEN_NS = (1, 3, 4, 6)
GOLDEN_DS = (5, 13)
# The forward's weight split (kernels/fwd.split_weights): the golden's n and D, n = 8, and an nD that
# spans several of its 128-column programs.
SPLIT_WEIGHTS_NS = (*GOLDEN_NS, 8)
SPLIT_WEIGHTS_DS = (*GOLDEN_DS, 300)

# Float64 golden-vs-autograd cases: every layout, gamma on/off, grad_x_post on/off.
AUTOGRAD_CASES = [
    Case(lead=lead, n=n, D=D, dtype="float32", seed=10 * n + D, gamma=gamma, grad_x_post=gxp, x_scale=xs)
    for n in GOLDEN_NS
    for D in GOLDEN_DS
    for lead, gamma, gxp, xs in (((2, 3), True, False, 1.0), ((5,), False, True, 4.0), ((4,), True, True, 0.25))
]

# Tiny cases for torch.autograd.gradcheck.
GRADCHECK_CASES = [
    Case(lead=(2,), n=1, D=3, dtype="float32", seed=1),
    Case(lead=(1, 2), n=3, D=5, dtype="float32", seed=2),
    Case(lead=(3,), n=2, D=3, dtype="float32", seed=3, gamma=False),
]

# Triton stage kernels through the interpreter (CPU): every n of the issue, odd D, one token, several
# layouts and dtypes. Small enough for the interpreter.
KERNEL_CASES = [
    Case(lead=(2, 3), n=4, D=67, dtype="bfloat16", seed=101),
    Case(lead=(5,), n=1, D=129, dtype="float32", seed=102, gamma=False, grad_x_post=True),
    Case(lead=(1,), n=2, D=33, dtype="float16", seed=103, x_scale=8.0),
    Case(lead=(3, 7), n=3, D=20, dtype="bfloat16", seed=104, grad_x_post=True, x_scale=0.125),
    Case(lead=(19,), n=6, D=45, dtype="float16", seed=105, gamma=False),
    Case(lead=(2, 9), n=8, D=17, dtype="float32", seed=106, grad_x_post=True, x_scale=4.0),
]
# Stream counts whose coefficient columns run in two groups (kernels/_common.o_groups: n = 5 is 32 + 16,
# n = 8 is 64 + 16) on the bf16 path, which KERNEL_CASES' n = 6 (fp16) and n = 8 (fp32) do not take.
GROUPED_CASES = [
    Case(lead=(6,), n=5, D=11, dtype="bfloat16", seed=107, grad_x_post=True),
    Case(lead=(2, 5), n=8, D=9, dtype="bfloat16", seed=108, x_scale=2.0),
]
# Block sizes a launcher is tried with (block_t, block_d); dot tiles need >= 16.
KERNEL_BLOCKS = [(16, 16), (32, 64), (16, 128)]
ELEMENTWISE_BLOCKS = [(1, 1), (4, 8), (16, 64)]
# Zero tokens, both layouts.
EMPTY_CASES = [Case(lead=(0,), n=4, D=8), Case(lead=(2, 0), n=3, D=5, grad_x_post=True)]

# GPU stage tests at realistic shapes (run only where CUDA is present).
GPU_CASES = [
    Case(lead=(2, 2048), n=4, D=2560, dtype="bfloat16", seed=201),
    Case(lead=(2, 2048), n=4, D=7168, dtype="bfloat16", seed=202, x_scale=8.0),
    Case(lead=(4096,), n=6, D=1280, dtype="bfloat16", seed=203),
    Case(lead=(4096,), n=4, D=2560, dtype="bfloat16", seed=204, gamma=False),
    Case(lead=(4096,), n=4, D=2560, dtype="bfloat16", seed=205, grad_x_post=True),
    Case(lead=(1000,), n=3, D=129, dtype="float16", seed=206, grad_x_post=True),
    Case(lead=(777,), n=8, D=67, dtype="float32", seed=207, x_scale=0.125),
]

# The whole layer (HyperConnection: pre + sinkhorn + post around a linear branch), through the
# interpreter: n = 1 and 6, odd D, both layouts, with and without gamma.
LAYER_CASES = [
    Case(lead=(2, 3), n=4, D=24, dtype="float32", seed=501),
    Case(lead=(5,), n=3, D=13, dtype="bfloat16", seed=502, gamma=False),
    Case(lead=(4,), n=1, D=9, dtype="float16", seed=503),
    Case(lead=(3,), n=6, D=7, dtype="float32", seed=504, gamma=False),
]

# Float64 golden-vs-autograd cases of the whole layer (golden/layer.py): both layouts, gamma on/off,
# n = 1 and 6, odd D, a short Sinkhorn and V4.1's norm_eps.
LAYER_AUTOGRAD_CASES = [
    Case(lead=(2, 3), n=4, D=5, dtype="float32", seed=701),
    Case(lead=(5,), n=1, D=13, dtype="float32", seed=702, gamma=False),
    Case(lead=(3,), n=6, D=7, dtype="float32", seed=703, iters=3, norm_eps=1e-20),
    Case(lead=(1, 4), n=3, D=13, dtype="float32", seed=704, gamma=False, x_scale=4.0),
]

# A cancelling dalpha sum: fp32 x scaled by 30, T = 5, n = 4, D = 49, no gamma
# (docs/bugs/dalpha-fp32-program-sum.md; seed 290 fails the rule when a program sums in fp32).
DALPHA_CANCEL_CASES = [
    Case(lead=(5,), n=4, D=49, dtype="float32", seed=s, gamma=False, x_scale=30.0) for s in (290, 600, 601, 602)
]


# --- the bug regression tests (tests/bugs) ----------------------------------------------------------------
# The historical bugs showed at B=2, S=64, n=4, D=128; these cases keep the traits that let each bug
# show (several streams, rows wider than a block, inv_rms far from 1, many programs per parameter
# gradient) at sizes the interpreter runs in a fraction of a second.

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

# The composer chain (tests/test_pipeline.py).
CHAIN_CASES = [
    Case(lead=(2, 5), n=4, D=40, dtype="bfloat16", seed=301, x_scale=8.0),
    Case(lead=(7,), n=3, D=21, dtype="float32", seed=302, gamma=False, grad_x_post=True),
]

# The public ops (tests/test_op.py).
OP_CASES = [
    Case(lead=(2, 3), n=4, D=24, dtype="bfloat16", seed=401),
    Case(lead=(5,), n=3, D=19, dtype="float32", seed=402, gamma=False, x_scale=4.0),
]

# mhc_post's float64 golden against torch.autograd (tests/golden/test_post_golden.py).
# Every n of the golden list, odd D, both layouts (BSND (2, 3), TND (5,)).
POST_AUTOGRAD_CASES = [
    Case(op="mhc_post", lead=lead, n=n, D=D, dtype="float32", seed=10 * n + D)
    for n, D, lead in itertools.product((1, 3, 4, 6), (5, 13), ((2, 3), (5,)))
]


# --- sinkhorn kernels (tests/kernels/test_sinkhorn_kernels.py) ---------------------------------------------


def sinkhorn_case(lead, n, dtype="float32", iters=20, init="random", seed=0) -> Case:
    return Case(op="sinkhorn", lead=lead, n=n, dtype=dtype, iters=iters, logits_init=init, seed=seed)


# (case, block_t): every n from 1 to 8 (n = 3, 5, 6, 7 padded and masked), BSND and TND, one token,
# bf16/fp16/fp32 logits, iters 1, 2, 3 and 20, random and near-identity logits, several programs.
SINKHORN_KERNEL_CASES = [
    (sinkhorn_case((2, 3), 4, "bfloat16", seed=1), None),
    (sinkhorn_case((5,), 1, seed=2), None),
    (sinkhorn_case((1,), 2, "float16", iters=2, init="identity", seed=3), None),
    (sinkhorn_case((3, 7), 3, "bfloat16", iters=1, seed=4), 4),  # 21 tokens in 6 programs
    (sinkhorn_case((19,), 6, "float16", init="identity", seed=5), 32),
    (sinkhorn_case((2, 9), 8, init="identity", seed=6), 32),
    (sinkhorn_case((37,), 5, iters=2, seed=7), None),  # 8 tokens a program: 5 programs, the last one partial
    (sinkhorn_case((1, 1), 7, "bfloat16", iters=3, init="identity", seed=8), None),
]


# --- mhc_post kernels (tests/kernels/test_post_kernels.py) --------------------------------------------------


def post_case(lead, n, D, dtype="bfloat16", seed=0, x_scale=1.0) -> Case:
    return Case(op="mhc_post", lead=lead, n=n, D=D, dtype=dtype, seed=seed, x_scale=x_scale)


# Every n of the issue (1, 3, 4, 6, 8; 3 and 6 padded to 4 and 8 and masked), odd D, one token, BSND and
# TND, bf16/fp16/fp32, x far from unit scale.
POST_KERNEL_CASES = [
    post_case((2, 3), 4, 67, "bfloat16", seed=1),
    post_case((5,), 1, 5, "float32", seed=2),
    post_case((1,), 3, 67, "float16", seed=3, x_scale=8.0),
    post_case((3, 7), 6, 5, "bfloat16", seed=4, x_scale=0.125),
    post_case((19,), 8, 13, "float32", seed=5),
    post_case((1, 1), 6, 33, "float16", seed=6),
]

# (block_t, block_d): blocks smaller than D (the backward loops over D, the forward's grid covers it),
# one token a program, and blocks larger than D and than the token count.
POST_BLOCKS = [(1, 32), (2, 16), (4, 128), (8, 64)]

# Compiled only: realistic shapes, the benchmark shape among them.
POST_GPU_CASES = [
    post_case((16384,), 4, 7168, "bfloat16", seed=201),
    post_case((2, 2048), 4, 2560, "bfloat16", seed=202),
    post_case((4096,), 6, 1280, "float16", seed=203),
    post_case((777,), 8, 67, "float32", seed=204, x_scale=0.125),
]


# --- the split forward (tests/kernels/test_fwd_split.py) ---------------------------------------------------

SPLIT_D = 49  # odd: with block_d = 16, four chunks per stream
_N1, _N3, _N4, _N6 = GOLDEN_NS
# (case, launch options): every axis covered, not the cross product. T = 70 is one more token block
# than 64 (and 5 blocks of 16); splits 2, 3, 7 and more than the chunks (n = 1: 4 chunks; n = 4: 16,
# more than the finish kernel's FINISH_UNROLL); h_in in one D block (block_d_apply 64 >= D), several
# (16, 32) and finish_cols' choice; the apply's steps (finish_block_d) wider than a program's columns
# (the default 64 or 128 over 16 or 32) and narrower (16 over 64: four steps, the last partial).
SPLIT_CASES = [
    (Case(lead=(70,), n=_N4, D=SPLIT_D, dtype="bfloat16", seed=801), dict(block_t=16, splits=2)),
    (Case(lead=(2, 35), n=_N3, D=SPLIT_D, dtype="float16", seed=802, gamma=False), dict(block_t=64, splits=3)),
    (Case(lead=(1,), n=_N6, D=SPLIT_D, dtype="float32", seed=803), dict(block_t=16, splits=7)),
    (Case(lead=(5,), n=_N1, D=SPLIT_D, dtype="bfloat16", seed=804, gamma=False), dict(block_t=16, splits=7)),
    (Case(lead=(1, 5), n=_N4, D=SPLIT_D, dtype="float32", seed=805, x_scale=8.0), dict(block_t=16, splits=100)),
    (Case(lead=(70,), n=_N6, D=SPLIT_D, dtype="bfloat16", seed=806, gamma=False), dict(block_t=16, splits=3, block_d_apply=16)),
    (Case(lead=(2, 3), n=_N1, D=SPLIT_D, dtype="float16", seed=807), dict(block_t=16, splits=2)),
    (Case(lead=(70,), n=_N3, D=SPLIT_D, dtype="float32", seed=808, gamma=False), dict(block_t=64, splits=7, block_d_apply=64, finish_block_d=16)),
    (Case(lead=(1, 1), n=_N4, D=SPLIT_D, dtype="float16", seed=809, x_scale=0.125), dict(block_t=16, splits=100)),
    (Case(lead=(5,), n=_N6, D=SPLIT_D, dtype="float16", seed=810), dict(block_t=16, splits=2, block_d_apply=32)),
    (Case(lead=(7, 10), n=_N4, D=SPLIT_D, dtype="bfloat16", seed=811), dict(block_t=16, splits=7, block_d_apply=16)),
    (Case(lead=(70,), n=_N1, D=SPLIT_D, dtype="float32", seed=812), dict(block_t=16, splits=3)),
    # n = 8 (O = 80 padded to 128), on the bf16 split weights
    (Case(lead=(3, 6), n=8, D=SPLIT_D, dtype="bfloat16", seed=813), dict(block_t=16, splits=5)),
]  # fmt: skip


# --- the delayed pre (DeepSeek-V4.1; tests/golden/test_delayed_golden.py, tests/kernels/test_delayed.py) ----

# Float64 golden-vs-autograd: every n of the golden, both layouts, gamma and grad_x_post on/off, and the
# V4.1 checkpoints' norm_eps = 1e-20. Each runs with a previous sublayer's h_pre_prev and without (stream 0).
DELAYED_AUTOGRAD_CASES = [
    Case(lead=lead, n=n, D=D, dtype="float32", seed=30 * n + D, gamma=gamma, grad_x_post=gxp, norm_eps=eps)
    for n in GOLDEN_NS
    for D in GOLDEN_DS
    for lead, gamma, gxp, eps in (((2, 3), True, False, 1e-6), ((5,), False, True, 1e-20))
]
# Triton through the interpreter: n = 1, 3, 4, 6, odd D, one token, every x dtype, both layouts.
DELAYED_KERNEL_CASES = [
    Case(lead=(2, 3), n=4, D=67, dtype="bfloat16", seed=201),
    Case(lead=(5,), n=1, D=33, dtype="float32", seed=202, gamma=False, grad_x_post=True),
    Case(lead=(1,), n=3, D=20, dtype="float16", seed=203, grad_x_post=True, norm_eps=1e-20),
    Case(lead=(19,), n=6, D=45, dtype="bfloat16", seed=204, gamma=False, x_scale=4.0),
    # n = 8: O_PAD 128, the finish kernel's narrower tile (fused_bwd.finish_tile) before dh_pre_prev's programs
    Case(lead=(7,), n=8, D=19, dtype="bfloat16", seed=205, grad_x_post=True),
]
# The seam (post + delayed pre in one pass; tests/kernels/test_seam.py): n = 1, 3, 4, 6, odd D, one token.
SEAM_CASES = [
    Case(lead=(2, 3), n=4, D=67, dtype="bfloat16", seed=301),
    Case(lead=(1,), n=1, D=33, dtype="float32", seed=302, gamma=False),
    Case(lead=(5,), n=3, D=20, dtype="float16", seed=303),
    Case(lead=(19,), n=6, D=45, dtype="bfloat16", seed=304, gamma=False),
]
