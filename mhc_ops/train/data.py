"""Byte-level data: the corpus, its train/validation split, and the batches every rank reads.

Tokens are raw bytes (vocab 256), so any UTF-8 file is a corpus without a tokenizer. The default
corpus is the Python standard library's own source, present on every machine, so training runs
offline. Everything here is deterministic: the split depends only on the corpus, the training
batches only on the seed and the step, the validation batches only on the split.
"""

from __future__ import annotations

import hashlib
import pathlib
import sysconfig
from dataclasses import dataclass

import torch

VOCAB = 256
DEFAULT_MAX_BYTES = 4 * 2**20
# Interleaved split: the corpus is cut into blocks and every VAL_EVERY-th block is validation, so both
# splits sample the whole corpus (a contiguous tail of the sorted stdlib would be only a few modules).
BLOCK_BYTES = 64 * 2**10
VAL_EVERY = 10
# Folders of the stdlib tree left out of the default corpus: installed packages are not the stdlib
# (and differ per machine); the test suites are large and dominated by generated data.
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


class DataError(ValueError):
    """A corpus that cannot be used (missing, not UTF-8, too short); the message names the cause."""


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # [N_train] uint8
    val: torch.Tensor  # [N_val] uint8
    source: str  # the file, or "stdlib:<path>"
    sha256: str  # of the whole corpus, before the split

    def describe(self) -> dict:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "train_bytes": len(self.train),
            "val_bytes": len(self.val),
        }


def stdlib_source(max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, str]:
    """The .py files under the stdlib folder in sorted order of relative path, concatenated and cut
    at max_bytes. -> (bytes, source description)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if not _SKIP_PARTS & set(p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    chunks, size = [], 0
    for path in files:
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
        if size >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes], f"stdlib:{root}"


def read_text_file(path: str) -> bytes:
    p = pathlib.Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {path}")
    data = p.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (byte {e.start})") from None
    return data


def split(data: bytes, source: str, min_len: int) -> Corpus:
    """Deterministic interleaved train/validation split; each part must hold at least min_len bytes
    (one window of seq + 1)."""
    blocks = [data[i : i + BLOCK_BYTES] for i in range(0, len(data), BLOCK_BYTES)]
    if len(blocks) < VAL_EVERY:
        # A small file: its last tenth is the validation part.
        cut = len(data) - len(data) // VAL_EVERY
        train, val = data[:cut], data[cut:]
    else:
        train = b"".join(b for i, b in enumerate(blocks) if i % VAL_EVERY != VAL_EVERY - 1)
        val = b"".join(b for i, b in enumerate(blocks) if i % VAL_EVERY == VAL_EVERY - 1)
    if min(len(train), len(val)) < min_len:
        raise DataError(
            f"{source} has {len(data)} bytes: train {len(train)} / validation {len(val)}, "
            f"each needs at least seq + 1 = {min_len}"
        )
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    return Corpus(as_tensor(train), as_tensor(val), source, hashlib.sha256(data).hexdigest())


def load(path: str | None, seq: int) -> Corpus:
    data, source = (read_text_file(path), path) if path is not None else stdlib_source()
    return split(data, source, min_len=seq + 1)


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of seq + 1 bytes at the starts -> (inputs, targets), both [len(starts), seq] int64."""
    idx = starts[:, None] + torch.arange(seq + 1)[None, :]
    win = tokens[idx].long()
    return win[:, :-1], win[:, 1:]


def rank_slice(batch: int, rank: int, world: int) -> slice:
    """This rank's disjoint rows of a global batch (batch divisible by world)."""
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


def train_batch(corpus: Corpus, step: int, *, seed: int, batch: int, seq: int, rank: int = 0, world: int = 1):
    """The global batch of a step is drawn from (seed, step) alone, so every rank draws the same one
    and keeps its own slice: N processes read exactly the rows one process reads.
    -> (inputs, targets) [batch / world, seq] int64."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(corpus.train) - seq, (batch,), generator=gen)
    return _windows(corpus.train, starts[rank_slice(batch, rank, world)], seq)


def val_batches(corpus: Corpus, *, count: int, batch: int, seq: int, rank: int = 0, world: int = 1):
    """count fixed validation batches, windows evenly spaced over the validation part.
    -> list of (inputs, targets) [batch / world, seq] int64, this rank's slice of each."""
    starts = torch.linspace(0, len(corpus.val) - seq - 1, count * batch).long().view(count, batch)
    return [_windows(corpus.val, s[rank_slice(batch, rank, world)], seq) for s in starts]
