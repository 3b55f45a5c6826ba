"""Stage seam_bwd (kernels/seam_bwd.py): the delayed pre(l+1)'s backward and mhc_post(l)'s with dx(l+1) never stored,
every gradient against golden/seam.py seam_backward in float64 by the accuracy rule, on the forward's
saved tensors from the fp32 golden (the kernel's inputs). CPU through the interpreter."""

import dataclasses

import pytest
import torch

from mhc_ops.golden import judge
from mhc_ops.golden.seam import SEAM_GRADS, SEAM_OUTPUTS, seam_backward, seam_forward
from mhc_ops.kernels.seam_bwd import launch_seam_bwd
from tests.cases import SEAM_CASES
from tests.helpers import KERNEL_DEVICE, SEAM_POST, SEAM_PRE, SEAM_UPSTREAM, nan_filled_outputs, seam_inputs

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
SAVED = ("out", "next_h_post", "next_inv_rms", "next_h_mix", "next_h_pre")  # seam_backward's, from the forward


def _saved(case, t) -> dict:
    fwd = seam_forward(*(t[k] for k in (*SEAM_POST, *SEAM_PRE)), norm_eps=case.norm_eps, hc_eps=case.hc_eps)
    return {k: v for k, v in zip(SEAM_OUTPUTS, fwd) if k in SAVED}


def _golden(case, t, saved, cd) -> dict:
    def up(v):
        return v.to(cd) if isinstance(v, torch.Tensor) and cd == torch.float64 else v

    args = [up(t[k]) for k in (*SEAM_POST, *SEAM_PRE)] + [up(saved[k]) for k in SAVED]
    grads = seam_backward(*args, *(up(t[k]) for k in SEAM_UPSTREAM), hc_eps=case.hc_eps, compute_dtype=cd)
    return dict(zip(SEAM_GRADS, grads))


def _kernel(case, t, saved, **launch) -> dict:
    pre = [t[k] for k in ("h_pre_prev", "phi", "alpha", "gamma")]
    args = [t[k] for k in SEAM_POST] + pre + [saved[k] for k in SAVED] + [t[k] for k in SEAM_UPSTREAM]
    with nan_filled_outputs():
        return dict(zip(SEAM_GRADS, launch_seam_bwd(*args, hc_eps=case.hc_eps, **launch)))


def _check(case, t, saved, got) -> None:
    ref64, ref32 = _golden(case, t, saved, torch.float64), _golden(case, t, saved, torch.float32)
    verdicts = []
    for k in SEAM_GRADS:
        if ref64[k] is None:
            assert got[k] is None, k
            continue
        assert got[k].shape == ref64[k].shape and got[k].dtype == ref32[k].dtype, k
        verdicts.append(judge(k, got[k], ref64[k], ref32[k]))
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


@pytest.mark.parametrize("gxp", [False, True], ids=["", "gxp"])
@pytest.mark.parametrize("first", [False, True], ids=["h_pre_prev", "first"])
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_seam_backward(case, first, gxp):
    t = seam_inputs(case, first, gxp, device=KERNEL_DEVICE)
    saved = _saved(case, t)
    _check(case, t, saved, _kernel(case, t, saved, splits=2))


# the seam kernel's (block_t, block_d, num_warps): the default's tokens at two widths, and 64 tokens on 8 warps
# (docs/perf.md, Performance XIII: the next GPU session's candidate)
SEAM_TILES = [(16, 16, 4), (16, 32, 4), (64, 16, 8)]


@pytest.mark.parametrize("tile", SEAM_TILES, ids=lambda v: "block_t={}-block_d={}-warps={}".format(*v))
@pytest.mark.parametrize("case", [dataclasses.replace(SEAM_CASES[0], lead=(37,), D=50, seed=311)], ids=str)
def test_seam_backward_tiles(case, tile):
    """Columns past D in the last chunk, token blocks past T; G on both of pass B's tiles, with and without
    pass A's bf16 parts of dh_mix, in one and three token ranges: the same rule."""
    t = seam_inputs(case, first=False, gxp=True, device=KERNEL_DEVICE)
    saved = _saved(case, t)
    block_t, block_d, warps = tile
    for g_tile, presplit, splits in (((32, 128), True, 1), ((64, 64), False, 3), ((32, 128), False, 3)):
        got = _kernel(case, t, saved, block_t=block_t, block_d=block_d, num_warps=warps, g_tile=g_tile,
                      presplit=presplit, splits=splits)  # fmt: skip
        _check(case, t, saved, got)


def test_seam_backward_without_the_next_sublayers_dh_pre():
    case = SEAM_CASES[0]
    t = seam_inputs(case, first=False, gxp=False, device=KERNEL_DEVICE) | {"dh_next_pre": None}
    saved = _saved(case, t)
    _check(case, t, saved, _kernel(case, t, saved, block_t=16))


def test_seam_backward_refuses_a_bad_maxnreg():
    case = SEAM_CASES[0]
    t = seam_inputs(case, first=False, gxp=False, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="maxnreg: expected None or an int in 32..255"):
        _kernel(case, t, _saved(case, t), maxnreg=20)


def test_seam_backward_zero_tokens():
    case = SEAM_CASES[2]
    t = seam_inputs(case, first=False, gxp=True, device=KERNEL_DEVICE)
    saved = _saved(case, t)
    per_token = {*SEAM_POST, "h_pre_prev", *SEAM_UPSTREAM, *SAVED}
    t = {k: v[:0] if k in per_token and v is not None else v for k, v in t.items()}
    saved = {k: v[:0] for k, v in saved.items()}
    got = _kernel(case, t, saved)
    assert got["dx"].shape == t["x"].shape and got["dh_res"].shape == (0, case.n, case.n)
    for k in ("dphi", "dalpha", "dbias", "dgamma"):
        assert torch.count_nonzero(got[k]) == 0, k



@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="a realistic shape: GPU only")
@pytest.mark.parametrize("n", [4, 8])
def test_seam_backward_realistic_shape(n):
    case = dataclasses.replace(SEAM_CASES[0], lead=(1024,), n=n, D=4096 if n == 4 else 2048, seed=7)
    t = seam_inputs(case, first=False, gxp=True, device=KERNEL_DEVICE)
    saved = _saved(case, t)
    _check(case, t, saved, _kernel(case, t, saved))
