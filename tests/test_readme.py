"""Every ```python block of README.md runs as written: each in a fresh interpreter, on CPU, with
TRITON_INTERPRET=1 (the Triton kernels through the interpreter)."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from mhc_ops.kernels._launch import INTERPRETER_NUMPY_CLASH

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of every ```python block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def run_block(code: str, cwd) -> subprocess.CompletedProcess:
    env = os.environ | {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


BLOCKS = python_blocks(README.read_text())


def test_readme_has_its_examples():
    # The module, the ops, the stages/Pipeline and the Hugging Face examples.
    assert len(BLOCKS) >= 4, [line for line, _ in BLOCKS]


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path):
    if "transformers" in code and importlib.util.find_spec("transformers") is None:
        pytest.skip("needs the transformers extra")
    if "TRITON_INTERPRET" in code and INTERPRETER_NUMPY_CLASH:  # the GPU image: triton 3.6 with numpy 2.5
        pytest.skip("this triton's interpreter refuses this numpy (docs/bugs/numpy-interpreter-range.md)")
    out = run_block(code, tmp_path)
    assert out.returncode == 0, f"README.md block at line {line} failed:\n{out.stderr[-4000:]}"


def test_a_failing_block_fails(tmp_path):
    text = "intro\n```python\nimport sys\nprint('ok')\n```\n\n```python\nraise SystemExit(3)\n```\n"
    blocks = python_blocks(text)
    assert [line for line, _ in blocks] == [2, 7]
    assert [run_block(code, tmp_path).returncode for _, code in blocks] == [0, 3]
