"""Shared machinery of the main job's CPU tests: the tiny configuration, in-process and subprocess
runs, a run folder's metrics, and Ctrl-C at a chosen step."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

from mhc_ops.train import loop
from mhc_ops.train.__main__ import main

REPO = pathlib.Path(__file__).resolve().parents[2]
# One layer, D = 32, a few steps: a run takes a second or two on a 2-core CPU.
TINY = ["--device", "cpu", "--layers", "1", "--dim", "32", "--heads", "2", "--seq", "32", "--batch", "4",
        "--eval-batches", "2", "--lr", "1e-2"]  # fmt: skip
# The fields of a metrics.jsonl record that a resumed run must reproduce bitwise (not the timings).
DETERMINISTIC = ("step", "train_loss", "val_loss", "lr", "grad_norm", "sinkhorn_max_dev", "h_res_gain")


def metrics(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train(tmp_path: pathlib.Path, name: str, *args: str) -> tuple[pathlib.Path, list[dict]]:
    """A TINY run into tmp_path/name, in-process; -> (its folder, its metrics)."""
    out = tmp_path / name
    assert main([*TINY, "--out", str(out), *args]) == 0
    return out, metrics(out)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_module(*args: str, module: str = "mhc_ops.train") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env(), timeout=300)


def ctrl_c_at(monkeypatch, step: int) -> None:
    """SIGINT arrives while the batch of step (0-based) is drawn: the run stops after that step, with
    step + 1 steps done."""
    real = loop.data_mod.train_batch

    def train_batch(corpus, s, **kwargs):
        if s == step:
            signal.raise_signal(signal.SIGINT)
        return real(corpus, s, **kwargs)

    monkeypatch.setattr(loop.data_mod, "train_batch", train_batch)
