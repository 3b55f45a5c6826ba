"""The forward's weight split (kernels/fwd.split_weights, one Triton launch) against its torch
reference split_weights_host: an exact three-part split everywhere, bitwise the torch one on the GPU.
Triton's interpreter rounds fp32 -> bf16 differently from the GPU's round-to-nearest-even (seen:
one ulp off on some elements), so there the parts differ from torch's while their sum is still
exactly gamma*phi."""

import pytest
import torch

from mhc_ops.kernels.fwd import split_weights, split_weights_host
from tests.cases import SPLIT_WEIGHTS_DS, SPLIT_WEIGHTS_NS
from tests.helpers import KERNEL_DEVICE

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


@pytest.mark.parametrize("n", SPLIT_WEIGHTS_NS)
@pytest.mark.parametrize("D", SPLIT_WEIGHTS_DS)
@pytest.mark.parametrize("gamma", [True, False])
def test_split_weights_is_the_torch_split_bitwise(n, D, gamma):
    g = torch.Generator().manual_seed(1000 * n + D)
    O = n * n + 2 * n
    phi = (torch.randn(O, n * D, generator=g) * 3.0).to(KERNEL_DEVICE)
    gam = (torch.rand(n, D, generator=g) + 0.5).to(KERNEL_DEVICE) if gamma else None
    w = split_weights(phi, gam)
    ref = split_weights_host(phi, gam)
    assert w.shape == ref.shape and w.dtype == torch.bfloat16
    _assert_same_split(w, ref, O)
    wg = phi if gam is None else phi * gam.reshape(1, -1)
    assert torch.equal((w[0].double() + w[1].double() + w[2].double())[:, :O], wg.t().double())


def _assert_same_split(w, ref, O):
    """Bitwise on the GPU; elsewhere the parts may differ by the interpreter's rounding, their sums
    and the zero padding columns (>= O) may not."""
    if w.is_cuda:
        assert torch.equal(w.view(torch.int16), ref.view(torch.int16))
    else:
        assert torch.equal(w.double().sum(0), ref.double().sum(0))
        assert not w[..., O:].any()


def test_split_weights_reads_a_strided_phi():
    g = torch.Generator().manual_seed(7)
    n, D = 3, 13
    O = n * n + 2 * n
    phi_t = torch.randn(n * D, O, generator=g).to(KERNEL_DEVICE)
    phi = phi_t.t()  # [O, nD], column-major
    gam = torch.rand(n, D, generator=g).to(KERNEL_DEVICE).t().contiguous().t()  # non-contiguous gamma
    _assert_same_split(split_weights(phi, gam), split_weights_host(phi, gam), O)
