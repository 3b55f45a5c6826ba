"""mhc_ops.mhc_pre_delayed, the public op: forward and every gradient (autograd) against the float64
golden by the accuracy rule on each backend, under torch.compile (fullgraph, one compilation for
every token count), and its input errors."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import mhc_ops
from mhc_ops.golden import judge
from mhc_ops.golden.mhc_pre import mhc_pre_delayed_backward, mhc_pre_delayed_forward
from tests.cases import DELAYED_KERNEL_CASES
from tests.helpers import HAS_CUDA, INTERPRETING, KERNEL_DEVICE, delayed_inputs

BACKENDS = ["golden"] + (["triton"] if KERNEL_DEVICE is not None else [])
GPU = not INTERPRETING and HAS_CUDA
LEAVES = ("x", "phi", "alpha", "bias", "gamma", "h_pre_prev")
GRADS = ("dx", "dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev")
UPSTREAM = ("dh_in", "dh_post", "dh_res", "dh_pre")


def _device(backend):
    return KERNEL_DEVICE if backend == "triton" else ("cuda" if GPU else "cpu")


def _reference(case, t, cd):
    """Outputs and input gradients of the golden delayed pre for the upstream gradients in t."""
    a = {k: v.to(cd) if isinstance(v, torch.Tensor) and v.is_floating_point() and cd == torch.float64 else v
         for k, v in t.items()}  # fmt: skip
    h_in, h_post, h_res, h_pre, inv_rms, h_mix = mhc_pre_delayed_forward(
        a["x"], a["phi"], a["alpha"], a["bias"], a["gamma"], a["h_pre_prev"], norm_eps=case.norm_eps,
        hc_eps=case.hc_eps, compute_dtype=cd)  # fmt: skip
    grads = mhc_pre_delayed_backward(
        a["x"], a["phi"], a["alpha"], a["dh_in"], a["dh_post"], a["dh_res"], a["dh_pre"], inv_rms, h_mix, h_pre,
        h_post, a["gamma"], a["h_pre_prev"], hc_eps=case.hc_eps, compute_dtype=cd)  # fmt: skip
    return {"h_in": h_in, "h_post": h_post, "h_res": h_res, "h_pre": h_pre}, dict(zip(GRADS, grads))


def _run(fn, case, t, dynamic=False):
    leaves = {k: None if t[k] is None else t[k].clone().requires_grad_() for k in LEAVES}
    if dynamic:  # the token dim, as a training loop with varying token counts marks it
        for k in ("x", "h_pre_prev"):
            torch._dynamo.mark_dynamic(leaves[k], 0)
    outs = fn(*(leaves[k] for k in LEAVES))
    loss = sum((o.float() * t[u].float()).sum() for o, u in zip(outs, UPSTREAM))
    loss.backward()
    names = ("h_in", "h_post", "h_res", "h_pre")
    return dict(zip(names, (o.detach() for o in outs))), {g: None if leaves[i] is None else leaves[i].grad
                                                         for g, i in zip(GRADS, LEAVES)}  # fmt: skip


def _assert_accurate(case, t, outs, grads):
    cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
    (o64, g64), (o32, g32) = _reference(case, cpu, torch.float64), _reference(case, cpu, torch.float32)
    verdicts = [judge(k, outs[k].cpu(), o64[k], o32[k]) for k in o64]
    verdicts += [judge(k, grads[k].cpu(), g64[k], g32[k]) for k in GRADS if g64[k] is not None]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert all((grads[k] is None) == (g64[k] is None) for k in GRADS)


@pytest.mark.parametrize("first", [False, True], ids=["h_pre_prev", "first"])
@pytest.mark.parametrize("case", DELAYED_KERNEL_CASES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_delayed_op_forward_and_gradients(backend, case, first):
    t = delayed_inputs(case, first, _device(backend))

    def fn(*leaves):
        return mhc_ops.mhc_pre_delayed(*leaves, norm_eps=case.norm_eps, hc_eps=case.hc_eps, backend=backend)

    outs, grads = _run(fn, case, t)
    assert outs["h_in"].dtype == t["x"].dtype and outs["h_pre"].dtype == torch.float32
    _assert_accurate(case, t, outs, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delayed_op_compiles_once_for_every_token_count(backend):
    base = DELAYED_KERNEL_CASES[0]
    counter = CompileCounterWithBackend("inductor" if GPU else "aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def fn(*leaves):
        return mhc_ops.mhc_pre_delayed(*leaves, backend=backend)

    frames = []
    for T in (3, 5, 9):
        case = type(base)(lead=(T,), n=4, D=19, dtype="float32", seed=T)
        t = delayed_inputs(case, first=False, device=_device(backend))
        outs, grads = _run(fn, case, t, dynamic=True)
        _assert_accurate(case, t, outs, grads)
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames[-1] == frames[0], f"frames compiled after each token count: {frames}"


def test_delayed_op_input_errors():
    t = delayed_inputs(DELAYED_KERNEL_CASES[0], first=False)
    args = [t[k] for k in LEAVES]
    with pytest.raises(ValueError, match=r"h_pre_prev: expected shape \[2, 3, 4\]"):
        mhc_ops.mhc_pre_delayed(*args[:5], t["h_pre_prev"][..., :3])
    with pytest.raises(ValueError, match="stages: expected None"):
        mhc_ops.mhc_pre_delayed(*args, stages={"pre_fwd": "golden"})
