"""The memory estimate (mhc_ops/train/memory.py): its saved-activation term against what autograd
saves on CPU, and the refusal of a run that cannot fit (exit 2, one line with both figures)."""

from __future__ import annotations

import random

import pytest
import torch

from mhc_ops.train import memory
from mhc_ops.train.__main__ import main, parse
from mhc_ops.train.model import GPT, ModelConfig, loss_fn
from tests.train.runs import TINY, run_module


def saved_bytes(net: torch.nn.Module, batch: int, seq: int) -> int:
    """Bytes of the distinct storages autograd saves in one forward and loss, parameters left out."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, 256, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(net(x), x)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(v for k, v in storages.items() if k not in params)


@pytest.mark.parametrize("residual", ["mhc", "plain"])
def test_saved_term_bounds_what_autograd_saves(residual):
    rng = random.Random()
    for _ in range(2):
        layers, dim, n = rng.choice([1, 2]), rng.choice([32, 64]), rng.choice([2, 4])
        batch, seq = rng.randrange(1, 4), rng.choice([16, 32])
        net = GPT(ModelConfig(layers=layers, dim=dim, heads=2, seq=seq, n=n, residual=residual))
        measured = saved_bytes(net, batch, seq)
        est = memory.estimate(layers=layers, dim=dim, n=n, seq=seq, batch=batch, mhc=residual == "mhc",
                              bf16=False, params=sum(p.numel() for p in net.parameters()))  # fmt: skip
        case = (residual, layers, dim, n, batch, seq, measured, est.saved)
        assert measured <= est.saved <= 1.3 * measured, case
        assert est.working * layers <= est.saved  # one layer's worth
        assert est.parameters == 16 * sum(p.numel() for p in net.parameters())


def test_a_run_that_cannot_fit_is_refused(monkeypatch, capsys, tmp_path):
    out = str(tmp_path / "never")
    free = random.randrange(1, 2**20)
    monkeypatch.setattr(memory, "available", lambda device: (free, "test memory"))
    with pytest.raises(SystemExit) as exc:
        main([*TINY, "--out", out])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "memory estimate" in err and "GiB" in err and "test memory" in err and "--seq" in err
    assert not (tmp_path / "never").exists()
    # Enough memory: the same run passes the check.
    monkeypatch.setattr(memory, "available", lambda device: (2**50, "test memory"))
    assert parse([*TINY, "--out", out]).cfg.seq == 32


def test_seq_100000_is_refused(tmp_path):
    """--seq 100000 at the default model: refused up front instead of growing until the machine swaps."""
    with torch.device("meta"):
        params = sum(p.numel() for p in GPT(ModelConfig(layers=4, dim=128, heads=4, seq=100000, n=4, residual="mhc")).parameters())
    need = memory.estimate(layers=4, dim=128, n=4, seq=100000, batch=8, mhc=True, bf16=False, params=params).total
    if memory.available(torch.device("cpu"))[0] >= need:
        pytest.skip(f"this machine has the {need / memory.GiB:.0f} GiB the run needs")
    proc = run_module("--device", "cpu", "--seq", "100000", "--out", str(tmp_path / "never"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "memory estimate" in proc.stderr
    assert "available system RAM" in proc.stderr and not (tmp_path / "never").exists()
