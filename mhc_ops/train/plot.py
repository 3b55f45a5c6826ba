"""Validation loss vs step of one or more training runs.

    python -m mhc_ops.train.plot DIR1 DIR2 ... [--out FILE] [--health]

Each DIR is a ``python -m mhc_ops.train --out DIR`` run (its metrics.jsonl); the label of a run is its
folder name. Each run's validation loss is a solid line; its train loss, dashed in the same colour, is
the mean training loss over the steps since the previous evaluation (what metrics.jsonl logs), so it
lags the validation curve by half an evaluation interval. Other fields of the records (lr, grad_norm,
...) are not drawn. Without --out the figure is written to loss.png in the current folder.
--health adds two panels: the mHC health numbers of each mHC run over training (Sinkhorn's largest
row/column-sum deviation from 1, and the gain of the product of all layers' h_res).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or GPU machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

TRAIN_LABEL = "dashed: train loss, the mean over the\nsteps since the previous evaluation"


def read_metrics(run: pathlib.Path, min_step: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] >= min_step]


HEALTH = (
    ("sinkhorn_max_dev", "Sinkhorn: max |row/col sum - 1|", "log"),
    ("h_res_gain", "gain of prod h_res", "linear"),
)


def plot_runs(runs: list[pathlib.Path], out: pathlib.Path, health: bool = False, min_step: int = 0) -> None:
    """Val loss (solid) and the mean train loss of each evaluation interval (dashed, same colour; one
    legend entry, TRAIN_LABEL, explains them); with health, one panel per HEALTH metric (runs without
    mHC, which log None, are left out); evaluations before min_step are left out (a zoom on the later
    steps). The figure replaces out atomically (a temporary file, then a rename)."""
    panels = 1 + len(HEALTH) * health
    fig, axes = plt.subplots(1, panels, figsize=(7 + 4.5 * (panels - 1), 4.5), squeeze=False)
    ax = axes[0, 0]
    for run in runs:
        rows = read_metrics(run, min_step)
        (line,) = ax.plot(
            [r["step"] for r in rows], [r["val_loss"] for r in rows], marker=".", label=f"{run.name} (val)"
        )
        trained = [r for r in rows if r["train_loss"] is not None]
        ax.plot(
            [r["step"] for r in trained], [r["train_loss"] for r in trained], ls="--", color=line.get_color(), alpha=0.6
        )
    if min_step == 0:
        ax.axhline(math.log(256), color="grey", lw=0.8, ls=":", label="uniform, ln 256")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title("validation loss and train loss")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, Line2D([], [], color="grey", ls="--", alpha=0.6, label=TRAIN_LABEL)], fontsize="small")
    for hax, (key, title, scale) in zip(axes[0, 1:], HEALTH):
        for k, run in enumerate(runs):
            rows = [r for r in read_metrics(run, min_step) if r.get(key) is not None]
            if rows:
                hax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", color=f"C{k}", label=run.name)
        hax.set_yscale(scale)
        hax.set_xlabel("step")
        hax.set_title(title)
        hax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
    os.replace(tmp, out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mhc_ops.train.plot", description=__doc__.split("\n")[0])
    parser.add_argument(
        "runs", nargs="+", type=pathlib.Path, metavar="DIR", help="run folders (python -m mhc_ops.train --out DIR)"
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("loss.png"), help="figure file (default: loss.png)"
    )
    parser.add_argument("--health", action="store_true", help="add the mHC health panels")
    parser.add_argument("--min-step", type=int, default=0, help="leave out evaluations before this step (zoom)")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            print(f"{parser.prog}: error: argument DIR: {run} has no metrics.jsonl", file=sys.stderr)
            return 2
    plot_runs(args.runs, args.out, args.health, args.min_step)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
