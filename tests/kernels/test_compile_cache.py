"""A new token count does not recompile: T and strides are runtime arguments (GPU only: the
interpreter compiles nothing)."""

import pytest
import torch

from mhc_ops.golden import Case, build
from mhc_ops.kernels import _reduce, dgamma, dh_mix, dparams, dx, fused_bwd, fwd, post, sinkhorn
from mhc_ops.stages import STAGES
from tests.helpers import HAS_CUDA, INTERPRETING

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="compiled kernels need a GPU")]
KERNELS = [fwd._fwd_kernel, fwd._fwd_partial_kernel, fwd._fwd_finish_kernel, dh_mix._dh_mix_kernel,
           dx._dx_kernel, dparams._dcoeff_partials_kernel, dparams._g_partials_kernel, dgamma._dgamma_partials_kernel, _reduce._sum_partials_kernel,
           fused_bwd._pass_a_kernel, fused_bwd._pass_b_kernel, fused_bwd._finish_kernel,
           sinkhorn._sinkhorn_fwd_kernel, sinkhorn._sinkhorn_bwd_kernel, post._post_fwd_kernel,
           post._post_bwd_kernel]  # fmt: skip
# Token counts chosen to hit T = 1, odd, and multiples of 16 (which Triton would otherwise specialise);
# up to 4096 the forward takes the split path on an H100/H200, 20000 and 20011 the single kernel.
TOKEN_COUNTS = (1, 37, 64, 1000, 4096, 20000, 20011)
FUSED_ARGS = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma")


def _compiled() -> int:
    return sum(len(cache[0]) for k in KERNELS for cache in k.device_caches.values())


def test_token_count_changes_do_not_recompile():
    sizes = []
    for T in TOKEN_COUNTS:
        for op in ("mhc_pre", "sinkhorn", "mhc_post"):
            bundle = build(Case(lead=(T,), n=4, D=96, seed=T, op=op), "cuda")
            for stage in bundle.stages():
                STAGES[stage].run("triton", **bundle.stage_inputs(stage))
        bundle = build(Case(lead=(T,), n=4, D=96, seed=T), "cuda")
        t = bundle.tensors
        fused_bwd.mhc_pre_backward_fused(**{k: t[k] for k in FUSED_ARGS})
        torch.cuda.synchronize()
        sizes.append(_compiled())
    # the single forward kernel compiles at the first T that takes it
    assert sizes[0] > 0 and len(set(sizes[:5])) == 1 and len(set(sizes[5:])) == 1, sizes
