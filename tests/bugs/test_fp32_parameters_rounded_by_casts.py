"""HyperConnection kept its parameters fp32 under a model cast by casting back, which left them
rounded to the cast's dtype (docs/bugs/fp32-parameters-rounded-by-casts.md)."""

import torch

from mhc_ops.nn import HyperConnection

RECORD = "docs/bugs/fp32-parameters-rounded-by-casts.md"


def _old_apply(self, fn, recurse=True):
    """The cast-back rule before the fix, for the mutant check."""
    if recurse:
        for module in self.children():
            module._apply(fn)

    def keep_fp32(t):
        out = fn(t)
        return out.float() if out.is_floating_point() else out

    return torch.nn.Module._apply(self, keep_fp32, recurse=False)


def _casts_keep_the_values() -> bool:
    """Parameters off the bf16 grid (after an optimizer step they always are) survive .to(bf16),
    .half() and .double() bitwise, in fp32, while the branch follows the casts."""
    hc = HyperConnection(16, 4, torch.nn.Linear(16, 16), use_gamma=True)
    with torch.no_grad():
        for p in (hc.phi, hc.alpha, hc.bias, hc.gamma):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 1e-3)
    before = {k: v.detach().clone() for k, v in hc.named_parameters() if not k.startswith("branch.")}
    ok = True
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double(), lambda m: m.float()):
        cast(hc)
        ok &= all(getattr(hc, k).dtype == torch.float32 and torch.equal(getattr(hc, k), v) for k, v in before.items())
    ok &= hc.branch.weight.dtype == torch.float32  # the last cast was .float()
    hc.to(torch.bfloat16)
    return ok and hc.branch.weight.dtype == torch.bfloat16


def test_model_casts_leave_the_mhc_parameters_exact():
    assert _casts_keep_the_values()


def test_the_check_fails_the_old_cast_back(monkeypatch):
    monkeypatch.setattr(HyperConnection, "_apply", _old_apply)
    assert not _casts_keep_the_values()
