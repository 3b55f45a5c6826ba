"""Data parallelism on CPU (gloo): torchrun with 2 processes against 1 process, same global batch and seed.

Each rank reads its half of every global batch, so both runs see the same data and start from the
same weights. They are not bitwise equal: a process sums the gradient over its half of the rows and
the all-reduce adds the two halves (one process sums all rows in one pass), and the losses are means
of rank means, so fp32 rounding differs. Measured over 6 such steps: at most 4.8e-7 (a few ulps of a
loss near 5); the tolerance, 1e-5, is twenty times that.

Every torchrun here also checks the teardown of docs/bugs/gloo-teardown-abort.md: no rank may reach
the interpreter's finalization while gloo's threads are alive (an atexit hook, installed through
sitecustomize, records the threads it finds).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from mhc_ops.train.__main__ import EXIT_INTERRUPTED, main
from tests.train.runs import ctrl_c_at

REPO = pathlib.Path(__file__).resolve().parents[2]
ARGS = ["--device", "cpu", "--layers", "1", "--dim", "32", "--heads", "2", "--seq", "32", "--batch", "4",
        "--eval-batches", "2", "--lr", "1e-2", "--steps", "4", "--eval-every", "2", "--seed", "3"]  # fmt: skip
TOL = 1e-5
# Gloo's threads, by the names its C++ code gives them (Linux: /proc/self/task/*/comm).
GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")
# sitecustomize for the ranks: at interpreter finalization (atexit), write the gloo threads still alive
# to FINALIZED_DIR/rank<R>.txt. A rank that ends without finalizing writes nothing.
FINALIZATION_HOOK = """\
import atexit, os
def _name(task):
    try:
        with open(f"/proc/self/task/{task}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:  # a thread that ended since the listing
        return ""
def _record():
    gloo = sorted(n for n in map(_name, os.listdir("/proc/self/task")) if n in THREADS)
    with open(os.path.join(FOLDER, "rank" + os.environ["RANK"] + ".txt"), "w") as f:
        f.write(" ".join(gloo))
if "RANK" in os.environ:
    atexit.register(_record)
"""


def _env(extra_path: pathlib.Path | None = None) -> dict:
    paths = [str(p) for p in (extra_path, REPO) if p is not None]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }


def finalization_hook(folder: pathlib.Path) -> pathlib.Path:
    """A sitecustomize folder for extra_path whose hook records, per rank, the gloo threads alive at
    interpreter finalization into folder."""
    site = folder / "site"
    site.mkdir(parents=True)
    hook = FINALIZATION_HOOK.replace("THREADS", repr(GLOO_THREADS)).replace("FOLDER", repr(str(folder)))
    (site / "sitecustomize.py").write_text(hook)
    return site


def gloo_threads_at_finalization(folder: pathlib.Path) -> dict[str, str]:
    """-> {rank file: the gloo threads it found} for the ranks that finalized with gloo threads alive."""
    found = {p.name: p.read_text() for p in folder.glob("rank*.txt")}
    return {k: v for k, v in found.items() if v}


def torchrun(*args: str, extra_path: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on localhost at a free port, so parallel tests do not collide.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mhc_ops.train",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(extra_path), timeout=240)


def metrics(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return metrics(out)


@pytest.mark.skipif(not pathlib.Path("/proc/self/task").is_dir(), reason="thread names need Linux's /proc")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(mode, single, tmp_path):
    out = tmp_path / mode
    proc = torchrun(*ARGS, "--dist", mode, "--out", str(out), extra_path=finalization_hook(tmp_path / "hook"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not gloo_threads_at_finalization(tmp_path / "hook")
    multi = metrics(out)
    assert [m["step"] for m in multi] == [m["step"] for m in single]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    for a, b in zip(single, multi):
        for key in ("train_loss", "val_loss"):
            if a[key] is not None:
                assert abs(a[key] - b[key]) < TOL, (mode, a["step"], key, a[key], b[key])


def test_fsdp_resumes_a_single_process_checkpoint(single, tmp_path, monkeypatch):
    """A one-process run stopped after step 1 by Ctrl-C, resumed by two FSDP processes: the checkpoint
    is the full (unsharded) state, which FSDP shards on load; the losses are the one-process run's
    within TOL."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        ctrl_c_at(m, 0)
        assert main([*ARGS, "--out", str(out)]) == EXIT_INTERRUPTED
    proc = torchrun("--resume", str(out), "--dist", "fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = metrics(out)
    assert [m["step"] for m in resumed] == [m["step"] for m in single]
    for a, b in zip(single, resumed):
        for key in ("train_loss", "val_loss", "lr", "grad_norm"):
            if a[key] is not None:
                assert abs(a[key] - b[key]) < TOL * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])


def test_a_failing_rank_ends_the_job(tmp_path):
    """Rank 1 raises in its first optimizer step while rank 0 goes on into the next all-reduce: the job
    must stop with rank 1's message, not hang."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    def _fail(*args, **kwargs):\n"
        "        raise RuntimeError('injected failure')\n"
        "    torch.optim.AdamW.step = _fail\n"
    )
    proc = torchrun(*ARGS, "--dist", "ddp", "--out", str(tmp_path / "run"), extra_path=inject)
    assert proc.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure" in proc.stderr
