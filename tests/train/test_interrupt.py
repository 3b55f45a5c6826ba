"""Ctrl-C: the run stops at the next step boundary, writes its checkpoint, summary.json and loss.png,
and exits with status 130 and one line on stderr, no traceback. A second Ctrl-C (or one before the
first step) stops at once, also with one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mhc_ops.train import checkpoint, loop
from mhc_ops.train.__main__ import EXIT_INTERRUPTED, PROG, main
from tests.train.runs import TINY, env, metrics


def test_sigint_writes_checkpoint_summary_and_plot(tmp_path):
    out = tmp_path / "run"
    # A run far longer than the test, evaluating every step so that progress shows in metrics.jsonl.
    cmd = [sys.executable, "-m", "mhc_ops.train", *TINY, "--steps", "100000", "--eval-every", "1",
           "--eval-batches", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 2):  # step 0 and step 1
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no step logged within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]  # what precedes it is the progress bar
    assert last.startswith(f"{PROG}: interrupted at step ") and f"--resume {out}" in last
    assert sum("interrupted" in line for line in stderr.splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 1 <= summary["steps_done"] < 100000
    assert checkpoint.load(out / checkpoint.NAME)["step"] == summary["steps_done"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final val loss" not in stdout  # no summary table for an interrupted run


def test_keyboard_interrupt_outside_the_stop_request_is_one_line(tmp_path, monkeypatch, capsys):
    """KeyboardInterrupt that the loop does not turn into a stop request (a second Ctrl-C): exit 130,
    one line; the checkpoint of the last evaluation stays."""
    out = tmp_path / "run"
    real = loop.data_mod.train_batch

    def train_batch(corpus, step, **kwargs):
        if step == 2:
            raise KeyboardInterrupt
        return real(corpus, step, **kwargs)

    monkeypatch.setattr(loop.data_mod, "train_batch", train_batch)
    assert main([*TINY, "--steps", "4", "--eval-every", "1", "--out", str(out)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"{PROG}: interrupted: stopped at once") and "Traceback" not in "\n".join(err)
    assert checkpoint.load(out / checkpoint.NAME)["step"] == 2


@pytest.mark.parametrize("second", [False, True])
def test_stop_request_handler(second):
    """The first SIGINT sets the request (no exception); the second goes to the previous handler (Python's:
    KeyboardInterrupt); leaving the block restores the previous handler. The previous handler is set to
    Python's here: a pytest-xdist worker may run with another (the CI's did, and the second SIGINT raised
    nothing)."""
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with loop.StopRequest(enabled=True) as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.requested
            if second:
                with pytest.raises(KeyboardInterrupt):
                    signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
