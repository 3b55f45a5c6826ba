"""The rows' output: the markdown table, the JSON lines and the device tag of their file names."""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Mapping

from . import host

ROW_KEYS = (
    "op", "impl", "T", "n", "D", "B", "S", "dtype", "ms", "floor_ms", "x_floor", "speedup_vs_compile",
    "parts_ms", "vs_parts", "status", "ok", "worst_output", "worst_err", "worst_bound", "extra_mem_bytes",
    "extra_mem_frac_x", "bytes", "copy_bw_GBps", *host.ROW_KEYS, "gpu", "device_name", "date", "run", "quick",
    "torch", "triton", "reason",
)  # fmt: skip


def gpu_tag(device_name: str) -> str:
    """A file-name tag for the device: 'NVIDIA H100 80GB HBM3' -> 'h100' (the first model-like word,
    letters then digits), otherwise the whole name in lower case with '-' for anything else."""
    name = device_name.lower()
    m = re.search(r"\b[a-z]{1,2}\d{1,4}[a-z]?\b", name)
    return m.group(0) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


TABLE_COLUMNS = (
    "op", "impl", "T", "n", "D", "ms", "floor_ms", "x_floor", "speedup_vs_compile", "vs_parts", "extra_mem_frac_x",
    "accuracy",
)  # fmt: skip
NUMBER_FORMAT = {
    "ms": ".4g",
    "floor_ms": ".4g",
    "x_floor": ".3g",
    "speedup_vs_compile": ".3g",
    "vs_parts": ".3g",
    "extra_mem_frac_x": ".3f",
}


def accuracy_cell(row: Mapping) -> str:
    status = row["status"]
    if status in ("ok", "FAIL"):
        rel = "<=" if status == "ok" else ">"
        return f"{status} ({row['worst_output']} {row['worst_err']:.2e} {rel} {row['worst_bound']:.2e})"
    reason = " ".join(str(row["reason"]).split())
    return f"{status} ({reason[:80]})"


def format_table(rows: list[Mapping]) -> str:
    def cell(row: Mapping, key: str) -> str:
        if key == "accuracy":
            return accuracy_cell(row).replace("|", "\\|")
        value = row[key]
        if value is None:
            return "-"
        return format(value, NUMBER_FORMAT[key]) if key in NUMBER_FORMAT else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k) for k in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _json_value(value):
    # Strict JSON has no NaN or infinity (a NaN output's error): they are written as null.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def jsonl_path(env: Mapping, out: pathlib.Path, suffix: str = "") -> pathlib.Path:
    """OUT/<gpu>-<date><suffix>.jsonl: rows are appended to it (rows of one run share `run`)."""
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{env['gpu']}-{env['date']}{suffix}.jsonl"


def append_jsonl(rows: list[Mapping], path: pathlib.Path, keys: tuple[str, ...] = ROW_KEYS) -> None:
    """One JSON object per row, every key of keys (null where a row has none)."""
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps({k: _json_value(row.get(k)) for k in keys}, allow_nan=False) + "\n")
