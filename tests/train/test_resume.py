"""Checkpoints and --resume on CPU: a run stopped halfway and resumed logs bitwise the metrics of the
same run uninterrupted; a folder that holds a run is never silently reused; a checkpoint is replaced
atomically; --resume refuses what would change the run."""

from __future__ import annotations

import random

import pytest
import torch

from mhc_ops.train import checkpoint
from mhc_ops.train.__main__ import EXIT_INTERRUPTED, main
from tests.train.runs import DETERMINISTIC, TINY, ctrl_c_at, metrics, train


def _deterministic(rows: list[dict]) -> list[tuple]:
    return [tuple(r[k] for k in DETERMINISTIC) for r in rows]


@pytest.mark.parametrize("stop", [3, 2], ids=["at-an-evaluation", "between-evaluations"])
def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, stop):
    """6 steps straight against 6 steps stopped by Ctrl-C after step `stop` and resumed: the same
    losses, learning rates, gradient norms and health numbers, to the bit. Stopping between two
    evaluations (step 2, evaluations every 3) checks that the checkpoint carries the partial sums of
    the interval; stopping at one (step 3), that the resumed run does not evaluate that step twice."""
    args = ["--steps", "6", "--eval-every", "3", "--warmup", "2", "--seed", str(random.randrange(10**6))]
    _, straight = train(tmp_path, "straight", *args)

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as m:
        ctrl_c_at(m, stop - 1)
        assert main([*TINY, *args, "--out", str(resumed)]) == EXIT_INTERRUPTED
    ckpt = checkpoint.load(resumed / checkpoint.NAME)
    assert ckpt["step"] == stop and ckpt["data"] == {"seed": int(args[-1]), "next_step": stop}
    assert ckpt["interval"]["steps"] == stop % 3
    assert ckpt["history"] == metrics(resumed)  # every record logged up to the checkpoint
    assert {"model", "optimizer", "scheduler", "config", "corpus"} <= ckpt.keys()
    assert ckpt["rng"].keys() == {"torch", "cuda", "python"} and ckpt["rng"]["cuda"] is None  # a CPU run

    assert main(["--resume", str(resumed)]) == 0
    assert _deterministic(metrics(resumed)) == _deterministic(straight), args
    assert checkpoint.load(resumed / checkpoint.NAME)["step"] == 6


def test_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    first = '{"step": 0, "val_loss": 5.5}\n'
    (out / "metrics.jsonl").write_text(first)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main([*TINY, "--steps", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--out" in err and "--resume" in err and "--overwrite" in err and "metrics.jsonl" in err
    assert (out / "metrics.jsonl").read_text() == first  # untouched
    assert main([*TINY, "--steps", "1", "--out", str(out), "--overwrite"]) == 0
    assert [m["step"] for m in metrics(out)] == [0, 1]
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the run's files only


def test_resume_refuses_what_would_change_the_run(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["--steps", "3", "--eval-every", "3"]
    with monkeypatch.context() as m:
        ctrl_c_at(m, 0)
        assert main([*TINY, *args, "--out", str(run)]) == EXIT_INTERRUPTED
    finished, _ = train(tmp_path, "finished", "--steps", "1")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / checkpoint.NAME).write_bytes(bytes(random.randrange(256) for _ in range(64)))
    capsys.readouterr()
    cases = [
        (["--resume", str(run), "--lr", "0.5"], "--lr"),
        (["--resume", str(run), "--seq", "16"], "--seq"),
        (["--resume", str(run), "--steps", "30"], "--steps"),
        (["--resume", str(run), "--overwrite"], "--overwrite"),
        (["--resume", str(run), "--out", str(tmp_path / "elsewhere")], "--out"),
        (["--resume", str(finished)], "--resume"),  # nothing left to do
        (["--resume", str(corrupt)], "--resume"),
    ]
    for argv, option in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, argv
        assert len(err.strip().splitlines()) == 1 and option in err and "Traceback" not in err, (argv, err)
    # How the same math runs may change: the device is named again, the same value.
    assert main(["--resume", str(run), "--device", "cpu"]) == 0
    assert [m["step"] for m in metrics(run)] == [0, 3]


def test_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    """A save that dies half-way (here torch.save raising after writing part of the file) leaves the
    previous checkpoint whole: the new one is written to a temporary file and renamed over it."""
    path = tmp_path / checkpoint.NAME
    before = {"format": checkpoint.FORMAT, "step": random.randrange(1, 100), "model": {"w": torch.randn(8)}}
    checkpoint.save(path, before)

    def torn_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("killed")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(OSError):
        checkpoint.save(path, {"format": checkpoint.FORMAT, "step": before["step"] + 1})
    after = checkpoint.load(path)
    assert after["step"] == before["step"] and torch.equal(after["model"]["w"], before["model"]["w"])
