"""Text from a trained run: the model of DIR/checkpoint.pt continues a prompt, byte by byte.

    python -m mhc_ops.train.sample DIR [--prompt TEXT] [--tokens N] [--temperature T] [--seed S]

The model is byte-level: it generates bytes, printed after the prompt, decoded as UTF-8 with
replacement characters where the bytes are not valid UTF-8. Each byte is drawn from the softmax of the
last position's logits divided by the temperature (0: the most likely byte), over a context of the
last --seq bytes (the run's). Runs on CUDA if torch sees a GPU, else on CPU, with the golden mHC
backend on CPU whatever the run used.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import torch

from . import checkpoint
from .loop import TrainConfig
from .model import GPT

PROG = "python -m mhc_ops.train.sample"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("run", type=pathlib.Path, metavar="DIR", help="a run folder (python -m mhc_ops.train --out DIR)")
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, help="bytes to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the sampling (default: %(default)s)")
    return p


def load_model(run: pathlib.Path, device: torch.device) -> GPT:
    """The trained model of run/checkpoint.pt in eval mode; checkpoint.CheckpointError if unusable."""
    ckpt = checkpoint.load(run / checkpoint.NAME)
    cfg = TrainConfig(**ckpt["config"])
    # The same math on any machine: backend auto picks Triton on CUDA tensors, the golden on CPU ones.
    net = GPT(dataclasses.replace(cfg.model_config(), backend="auto", stages=None))
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval()


@torch.no_grad()
def generate(net: GPT, prompt: bytes, tokens: int, temperature: float, generator: torch.Generator) -> bytes:
    """prompt (at least one byte) -> the tokens bytes that follow it."""
    device = next(net.parameters()).device
    ctx = torch.tensor(list(prompt), dtype=torch.long, device=device)[None]  # [1, len]
    out = []
    for _ in range(tokens):
        logits = net(ctx[:, -net.cfg.seq :])[0, -1]  # [256] fp32
        if temperature == 0:
            nxt = logits.argmax()
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator)[0].to(device)
        out.append(int(nxt))
        ctx = torch.cat([ctx, nxt.view(1, 1)], dim=1)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tokens < 1:
        parser.error(f"argument --tokens: must be at least 1, got {args.tokens}")
    if not args.temperature >= 0:
        parser.error(f"argument --temperature: must be 0 or more, got {args.temperature}")
    if not args.prompt:
        parser.error("argument --prompt: must hold at least one character")
    if not args.run.is_dir():
        parser.error(f"argument DIR: {args.run} is not a folder")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        net = load_model(args.run, device)
    except checkpoint.CheckpointError as e:
        parser.error(f"argument DIR: {e}")
    prompt = args.prompt.encode("utf-8", errors="surrogateescape")  # the command line's own bytes
    text = generate(net, prompt, args.tokens, args.temperature, torch.Generator().manual_seed(args.seed))
    print((prompt + text).decode("utf-8", errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
