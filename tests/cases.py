"""Shape lists and fixture cases of the test suite, in one place."""

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

# A cancelling dalpha sum: fp32 x scaled by 30, T = 5, n = 4, D = 49, no gamma
# (docs/bugs/dalpha-fp32-program-sum.md; seed 290 fails the rule when a program sums in fp32).
DALPHA_CANCEL_CASES = [
    Case(lead=(5,), n=4, D=49, dtype="float32", seed=s, gamma=False, x_scale=30.0) for s in (290, 600, 601, 602)
]
