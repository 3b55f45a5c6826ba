"""A run's files and its checkpoint: written atomically (a temporary file, then a rename), so a run
killed at any moment leaves the previous complete version, never a torn one.

``DIR/checkpoint.pt`` (``torch.save`` of a dict, read back with ``weights_only=True``):

- ``format``: FORMAT; ``step``: optimizer steps done; ``config``: the TrainConfig as a dict;
- ``model``: the full state dict (FSDP's shards gathered); ``optimizer``: AdamW's full state dict,
  keyed by parameter name (``torch.distributed.checkpoint.state_dict``, so the same file serves one
  process, DDP and FSDP); ``scheduler``: the learning-rate schedule's state dict;
- ``rng``: the torch CPU generator, the CUDA generators when CUDA was used, Python's ``random``
  (numpy's is not used by the job); ``data``: the batch sampler's state, which is the seed and the
  next step (a step's batch is drawn from (seed, step) alone, data.train_batch);
- ``interval``: the sums since the last evaluation (train loss, gradient norm, steps, time), so a run
  resumed from a checkpoint between two evaluations logs the same next train loss;
- ``history``: every metrics.jsonl record up to ``step`` (a resumed run rewrites metrics.jsonl from it);
- ``corpus``: the corpus description (source, sha256, sizes), checked on resume.
"""

from __future__ import annotations

import json
import os
import pathlib
import random

import torch

FORMAT = 1
NAME = "checkpoint.pt"
# The files a run writes in its folder; --overwrite removes these (and nothing else).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "loss.png", NAME)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the cause."""


def holds_run(folder: pathlib.Path) -> list[str]:
    """The run files present in folder (empty: no run there)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def _replace(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text(path: pathlib.Path, text: str) -> None:
    """path's content becomes text, atomically."""
    _replace(path, lambda tmp: tmp.write_text(text))


def write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def save(path: pathlib.Path, payload: dict) -> None:
    """torch.save(payload) to path, atomically."""
    _replace(path, lambda tmp: torch.save(payload, tmp))


def load(path: pathlib.Path) -> dict:
    """-> the checkpoint dict; CheckpointError if it is missing, unreadable or of another format."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors alike
        raise CheckpointError(f"{path} cannot be read: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this job (format {FORMAT})")
    return payload


def rng_state(cuda: bool) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else None,
        "python": random.getstate(),
    }


def set_rng_state(state: dict, cuda: bool) -> None:
    torch.set_rng_state(state["torch"])
    if cuda and state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
