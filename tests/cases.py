"""Shape lists and fixture cases of the test suite, in one place."""

from mhc_ops.golden import Case

# Stream counts and hidden sizes that break assumptions: n = 1, odd n, n = 6; D odd, not a power of two.
GOLDEN_NS = (1, 3, 4, 6)
GOLDEN_DS = (5, 13)

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
