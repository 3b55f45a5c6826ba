"""python -m mhc_ops.train.sample: text from a tiny trained run, reproducible by --seed; bad input is one
line and exit 2."""

from __future__ import annotations

import random

import pytest
import torch

from mhc_ops.train import checkpoint, sample
from mhc_ops.train.__main__ import main as train_main
from tests.train.runs import TINY, run_module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "run"
    assert train_main([*TINY, "--steps", "3", "--eval-every", "3", "--out", str(out)]) == 0
    return out


def test_sample_prints_text(run):
    proc = run_module(str(run), "--prompt", "def ", "--tokens", "24", "--seed", "1", module="mhc_ops.train.sample")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("def ") and len(proc.stdout.rstrip("\n")) > len("def ")
    assert proc.stderr == ""


def test_generate_is_reproducible_and_byte_exact(run):
    net = sample.load_model(run, torch.device("cpu"))
    prompt = bytes(random.randrange(32, 127) for _ in range(random.randrange(1, 50)))  # longer than --seq too
    tokens, seed = random.randrange(1, 20), random.randrange(10**6)
    text = sample.generate(net, prompt, tokens, 0.8, torch.Generator().manual_seed(seed))
    assert len(text) == tokens
    assert text == sample.generate(net, prompt, tokens, 0.8, torch.Generator().manual_seed(seed))
    greedy = sample.generate(net, prompt, tokens, 0.0, torch.Generator())
    # Greedy is the argmax of each step's logits: the first byte is the model's most likely next byte.
    with torch.no_grad():
        first = net(torch.tensor(list(prompt))[None, -net.cfg.seq :])[0, -1].argmax().item()
    assert greedy[0] == first


def test_sample_bad_input_one_line_exit_2(run, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / checkpoint.NAME).write_bytes(b"not a checkpoint")
    cases = [
        ([str(tmp_path / "missing")], "DIR"),
        ([str(tmp_path)], "DIR"),  # no checkpoint.pt
        ([str(corrupt)], "DIR"),
        ([str(run), "--tokens", "0"], "--tokens"),
        ([str(run), "--temperature", "-1"], "--temperature"),
        ([str(run), "--prompt", ""], "--prompt"),
    ]
    for argv, option in cases:
        with pytest.raises(SystemExit) as exc:
            sample.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, argv
        assert len(err.strip().splitlines()) == 1 and option in err and "Traceback" not in err, (argv, err)
