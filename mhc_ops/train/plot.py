"""Validation loss vs step of one or more training runs.

    python -m mhc_ops.train.plot DIR1 DIR2 ... [--out FILE]

Each DIR is a ``python -m mhc_ops.train --out DIR`` run (its metrics.jsonl and config.json); the label
of a run is its folder name. Without --out the figure is written to loss.png in the current folder.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or GPU machines
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def plot_runs(runs: list[pathlib.Path], out: pathlib.Path) -> None:
    """Val loss (solid) and the mean train loss of each evaluation interval (dashed, same colour)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        rows = read_metrics(run)
        (line,) = ax.plot(
            [r["step"] for r in rows], [r["val_loss"] for r in rows], marker=".", label=f"{run.name} (val)"
        )
        trained = [r for r in rows if r["train_loss"] is not None]
        ax.plot(
            [r["step"] for r in trained], [r["train_loss"] for r in trained], ls="--", color=line.get_color(), alpha=0.6
        )
    ax.axhline(math.log(256), color="grey", lw=0.8, ls=":", label="uniform, ln 256")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title("validation loss (dashed: train loss)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mhc_ops.train.plot", description=__doc__.split("\n")[0])
    parser.add_argument(
        "runs", nargs="+", type=pathlib.Path, metavar="DIR", help="run folders (python -m mhc_ops.train --out DIR)"
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("loss.png"), help="figure file (default: loss.png)"
    )
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            print(f"{parser.prog}: error: argument DIR: {run} has no metrics.jsonl", file=sys.stderr)
            return 2
    plot_runs(args.runs, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
