"""python -m mhc_ops.train on CPU: a short run and its outputs, plain residual, per-stage backends,
recompute, --compile and --compile-mode, bad input, the data split, the learning-rate schedule and the
plot command (checkpoints and resume: test_resume.py; Ctrl-C: test_interrupt.py; the memory estimate:
test_memory.py; sampling: test_sample.py).

Runs are tiny (one layer, D = 32, a few steps) so the folder stays within CI's budget; the default
configuration is what nox -s train runs. The training runs call ``main`` in-process (no interpreter
start-up per test); one bad-input case and the plot command run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import random
import types

import pytest
import torch

from mhc_ops.train import data, loop, plot
from mhc_ops.train.__main__ import build_parser, main, validate
from tests.helpers import INTERPRETING
from tests.train.runs import DETERMINISTIC, TINY, run_module, train

KEYS = {*DETERMINISTIC, "tokens_per_s", "peak_mem_bytes"}


def test_short_run_writes_outputs_and_learns(tmp_path, capsys):
    out, metrics = train(tmp_path, "mhc", "--steps", "16", "--eval-every", "8")
    assert [m["step"] for m in metrics] == [0, 8, 16]
    assert all(KEYS <= m.keys() for m in metrics)
    assert abs(metrics[0]["val_loss"] - math.log(256)) < 0.3  # untrained: near uniform
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 1.0
    assert metrics[-1]["train_loss"] < metrics[1]["train_loss"]
    for m in metrics:
        # Sinkhorn after 20 iterations: doubly stochastic to well under a percent; its product over
        # the blocks neither amplifies nor damps the streams.
        assert 0 <= m["sinkhorn_max_dev"] < 1e-2
        assert abs(m["h_res_gain"] - 1) < 0.05
        assert m["peak_mem_bytes"] > 0
    assert metrics[-1]["tokens_per_s"] > 0
    assert metrics[0]["lr"] is None and metrics[0]["grad_norm"] is None  # no step yet
    assert all(m["lr"] > 0 and m["grad_norm"] > 0 for m in metrics[1:])
    config = json.loads((out / "config.json").read_text())
    assert config["residual"] == "mhc" and config["n"] == 4 and config["world_size"] == 1
    assert config["compile"] is False and config["compile_mode"] is None
    assert config["mhc_params"] == 2 * (24 * 4 * 32 + 3 + 24)  # two blocks: phi [24, 128], alpha, bias
    assert config["corpus"]["source"].startswith("stdlib:")
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_val_loss"] == metrics[-1]["val_loss"]
    assert summary["steps_done"] == 16 and summary["interrupted"] is False
    assert (out / "checkpoint.pt").is_file()
    printed = capsys.readouterr().out
    assert "final val loss" in printed and "tokens/s" in printed and "wall time" in printed


def test_plain_residual(tmp_path):
    out, metrics = train(tmp_path, "plain", "--residual", "plain", "--steps", "8", "--eval-every", "8")
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    assert metrics[-1]["sinkhorn_max_dev"] is None and metrics[-1]["h_res_gain"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["residual"] == "plain" and config["mhc_params"] == 0


@pytest.mark.skipif(not INTERPRETING, reason="Triton stages on the CPU run need the interpreter")
def test_stages_on_triton_and_recompute_match_golden(tmp_path):
    """Two backward stages swapped to Triton (interpreter) through --stages, and --recompute, give the
    golden run's losses: the same math in fp32. With --gamma, so that the dgamma stage runs."""
    args = ("--steps", "3", "--eval-every", "3", "--backend", "golden", "--gamma")
    _, golden = train(tmp_path, "golden", *args)
    _, staged = train(tmp_path, "staged", *args, "--stages", "dgamma=triton,dx=triton")
    _, recomputed = train(tmp_path, "recompute", *args, "--recompute")
    for other in (staged, recomputed):
        for a, b in zip(golden, other):
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-5)


def test_delayed_pre_learns(tmp_path):
    """--hc delayed: every block collapses its streams with the previous block's h_pre (DeepSeek-V4.1)."""
    out, metrics = train(tmp_path, "delayed", "--hc", "delayed", "--steps", "16", "--eval-every", "8")
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 1.0
    assert json.loads((out / "config.json").read_text())["hc"] == "delayed"


def test_compile_mode_default_trains(tmp_path, monkeypatch):
    """--compile --compile-mode default reaches torch.compile, whose graph of the model trains. The
    backend is dynamo's eager instead of inductor: inductor's C++ build of this tiny model takes about
    40 s on a 2-core CPU (aot_eager about 12 s); CUDA runs inductor (benchmarks/gpu_session.sh
    train-compile, train-graphs)."""
    compile_calls = []
    real_compile = torch.compile

    def compile_eager(model, **kwargs):
        compile_calls.append(kwargs)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    args = ("--steps", "1", "--compile", "--compile-mode", "default")
    out, metrics = train(tmp_path, "compiled", *args)
    assert compile_calls == [{"mode": "default"}]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    assert json.loads((out / "config.json").read_text())["compile_mode"] == "default"


def test_reduce_overhead_marks_each_training_step(tmp_path, monkeypatch):
    """Under reduce-overhead every training forward follows torch.compiler.cudagraph_mark_step_begin
    (CUDA graph trees may then reuse the previous step's outputs), and evaluation runs the eager model.
    CUDA graphs need CUDA, so on CPU the compiled module is replaced by a recorder of its calls."""
    events = []

    class Recorder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            events.append("forward")
            return self.model(x)

    def compile_recording(model, **kwargs):
        events.append(kwargs["mode"])
        return Recorder(model)

    monkeypatch.setattr(torch, "compile", compile_recording)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: events.append("mark"))
    parser = build_parser()
    argv = [*TINY, "--steps", "3", "--eval-every", "3", "--compile", "--out", str(tmp_path / "graphs")]
    plan = validate(parser.parse_args(argv), parser)
    cfg = dataclasses.replace(plan.cfg, compile_mode="reduce-overhead")
    loop.train(cfg, plan.corpus, loop.setup(cfg))
    assert events == ["reduce-overhead"] + ["mark", "forward"] * 3  # no eval forward through the graphs
    assert json.loads((tmp_path / "graphs" / "config.json").read_text())["compile_mode"] == "reduce-overhead"


def test_custom_data_file(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out, metrics = train(tmp_path, "custom", "--data", str(text), "--steps", "8", "--eval-every", "8")
    assert json.loads((out / "config.json").read_text())["corpus"]["source"] == str(text)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 1.0


def _bad_cases(tmp_path: pathlib.Path) -> list[tuple[list[str], str]]:
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00" * 100)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    cases = [
        (["--residual", "hyper"], "--residual"),
        (["--backend", "cuda"], "--backend"),
        (["--device", "tpu"], "--device"),
        (["--dist", "mpi"], "--dist"),
        (["--n", "0"], "--n"),
        (["--steps", "ten"], "--steps"),
        (["--lr", "-1"], "--lr"),
        (["--heads", "3"], "--heads"),
        (["--data", str(tmp_path / "missing.txt")], "--data"),
        (["--data", str(binary)], "--data"),
        (["--data", str(short)], "--data"),
        (["--stages", "nosuchstage=golden"], "--stages"),
        (["--stages", "dgamma=cuda"], "--stages"),
        (["--stages", "dgamma"], "--stages"),
        (["--stages", "dgamma=golden,,dx=golden"], "--stages"),
        (["--stages", "dgamma=golden,dgamma=triton"], "--stages"),
        (["--stages", "dgamma=golden"], "--stages"),  # no gamma, no dgamma stage
        (["--residual", "plain", "--stages", "dx=golden"], "--stages"),
        (["--residual", "plain", "--recompute"], "--recompute"),
        (["--residual", "plain", "--hc", "delayed"], "--hc"),
        (["--hc", "delayed", "--stages", "dx=golden"], "--stages"),
        (["--hc", "later"], "--hc"),
        (["--dist", "ddp"], "--dist"),
        (["--out", str(short)], "--out"),
        (["--compile-mode", "default"], "--compile-mode"),  # without --compile
        (["--compile", "--compile-mode", "fast"], "--compile-mode"),
        (["--compile", "--compile-mode", "reduce-overhead", "--device", "cpu"], "--compile-mode"),
        (["--warmup", "500"], "--warmup"),  # more than --steps
        (["--resume", str(tmp_path / "missing")], "--resume"),
        (["--resume", str(tmp_path)], "--resume"),  # a folder without a checkpoint
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device"))
        cases.append((["--compile", "--compile-mode", "reduce-overhead"], "--compile-mode"))  # auto is cpu here
    return cases


def test_bad_input_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for argv, option in _bad_cases(tmp_path):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "never")] if {"--out", "--resume"}.isdisjoint(argv) else argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2, argv
        assert len(err.strip().splitlines()) == 1 and option in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "never").exists()  # validation fails before anything is built or written


def test_triton_on_cpu_needs_the_interpreter(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for argv, option in ((["--backend", "triton"], "--backend"), (["--stages", "dx=triton"], "--stages")):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--device", "cpu", "--out", str(tmp_path / "never")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and option in err and "TRITON_INTERPRET" in err


def test_bad_input_subprocess_has_no_traceback(tmp_path):
    proc = run_module("--stages", "nosuchstage=golden", "--out", str(tmp_path / "never"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--stages" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_split_and_batches_are_deterministic_and_disjoint_per_rank():
    corpus = data.load(None, seq=32)
    assert corpus.sha256 == data.load(None, seq=32).sha256
    assert len(corpus.val) * 8 < len(corpus.train) < len(corpus.val) * 10
    x, y = data.train_batch(corpus, 5, seed=1, batch=8, seq=32)
    assert x.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, data.train_batch(corpus, 5, seed=1, batch=8, seq=32)[0])
    assert not torch.equal(x, data.train_batch(corpus, 6, seed=1, batch=8, seq=32)[0])
    # Two ranks read the rows one process reads, each its own half.
    halves = [data.train_batch(corpus, 5, seed=1, batch=8, seq=32, rank=r, world=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), x)
    val = data.val_batches(corpus, count=2, batch=8, seq=32)
    val_halves = [data.val_batches(corpus, count=2, batch=8, seq=32, rank=r, world=2) for r in range(2)]
    for i in range(2):
        assert torch.equal(torch.cat([val_halves[0][i][0], val_halves[1][i][0]]), val[i][0])


def test_schedule_is_linear_warmup_then_cosine():
    """make_scheduler (LinearLR, then CosineAnnealingLR, through SequentialLR) gives step s the closed
    form: lr · (s + 1) / warmup during the warmup, then the cosine from lr down to a tenth of it."""
    rng = random.Random()
    steps = rng.randrange(8, 40)
    cases = [(steps, rng.randrange(2, steps)), (steps, 0), (steps, 1), (steps, steps)]  # the edges too
    for steps, warmup in cases:
        cfg = types.SimpleNamespace(steps=steps, warmup=warmup, lr=10 ** rng.uniform(-4, -1))
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([param], lr=cfg.lr)
        sched = loop.make_scheduler(opt, cfg)
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            param.grad = torch.ones(1)
            opt.step()
            sched.step()
        decay = steps - warmup
        expected = [
            cfg.lr * (s + 1) / warmup
            if s < warmup
            else cfg.lr * (loop.MIN_LR_FRACTION + (1 - loop.MIN_LR_FRACTION) * (1 + math.cos(math.pi * (s - warmup) / decay)) / 2)
            for s in range(steps)
        ]
        assert lrs == pytest.approx(expected, rel=1e-12), (steps, warmup)


def test_logged_lr_is_the_schedules(tmp_path):
    """metrics.jsonl's lr is the learning rate of the last step before each evaluation."""
    _, metrics = train(tmp_path, "lr", "--steps", "6", "--eval-every", "2", "--warmup", "3")
    lr = float(TINY[TINY.index("--lr") + 1])
    assert [m["lr"] for m in metrics[1:]] == pytest.approx(
        [lr * 2 / 3, lr, lr * (0.1 + 0.9 * (1 + math.cos(math.pi * 2 / 3)) / 2)], rel=1e-12
    )


def _fake_run(folder: pathlib.Path, losses: list[float]) -> pathlib.Path:
    folder.mkdir()
    rows = [{"step": 10 * i, "train_loss": None if i == 0 else v + 0.1, "val_loss": v} for i, v in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_overlays_runs(tmp_path):
    a = _fake_run(tmp_path / "mhc", [5.5, 3.0, 2.5])
    b = _fake_run(tmp_path / "plain", [5.5, 3.2, 2.7])
    figure = tmp_path / "both.png"
    proc = run_module(str(a), str(b), "--out", str(figure), module="mhc_ops.train.plot")
    assert proc.returncode == 0, proc.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_names_a_folder_without_metrics(tmp_path, capsys):
    a = _fake_run(tmp_path / "mhc", [5.5, 3.0])
    assert plot.main([str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nothing" in err
    assert not (tmp_path / "x.png").exists()


def test_plot_health_panels_leave_out_runs_without_mhc(tmp_path, monkeypatch):
    mhc = _fake_run(tmp_path / "mhc", [5.5, 3.0, 2.5])
    rows = [json.loads(line) for line in (mhc / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r |= {"sinkhorn_max_dev": 1e-4 * (i + 1), "h_res_gain": 1.0 + 0.01 * i}
    (mhc / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = _fake_run(tmp_path / "plain", [5.5, 3.2, 2.7])  # no health keys, as --residual plain logs None
    closed = []
    monkeypatch.setattr(plot.plt, "close", closed.append)
    plot.plot_runs([mhc, plain], tmp_path / "h.png", health=True)
    (fig,) = closed
    loss_ax, dev_ax, gain_ax = fig.axes
    assert len(loss_ax.get_lines()) == 5  # val + train per run, and the uniform line
    # One legend entry explains every run's dashed line.
    assert loss_ax.get_legend().get_texts()[-1].get_text() == plot.TRAIN_LABEL
    assert "since the previous evaluation" in plot.TRAIN_LABEL.replace("\n", " ")
    assert [line.get_label() for line in dev_ax.get_lines()] == ["mhc"]
    assert list(gain_ax.get_lines()[0].get_ydata()) == [r["h_res_gain"] for r in rows]
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
