"""Test configuration: the Triton interpreter on CPU-only machines, and stage selection.

``pytest --stage NAME`` keeps only the tests marked ``@pytest.mark.stage(NAME)``, the tests of a
composite that stands for NAME (``--stage dx`` keeps those marked ``pre_bwd``, the fused backward), and
for a composite the tests of its parts; ``nox -s test_stage -- NAME`` passes it.
"""

import os

import torch

# Must be set before triton is imported anywhere: CPU tensors run the kernels through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from mhc_ops.golden import COMPOSITES, STAGE_NAMES  # noqa: E402
from mhc_ops.golden.registry import composites_of  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--stage", action="store", default=None, help=f"run only one stage's tests: {', '.join(STAGE_NAMES)}"
    )


def pytest_collection_modifyitems(config, items):
    stage = config.getoption("--stage")
    if stage is None:
        return
    if stage not in STAGE_NAMES:
        raise pytest.UsageError(f"--stage: unknown stage {stage!r}; valid names: {', '.join(STAGE_NAMES)}")
    wanted = {*composites_of(stage), *COMPOSITES.get(stage, ())}
    keep, drop = [], []
    for item in items:
        names = {name for m in item.iter_markers("stage") for name in m.args}
        (keep if names & wanted else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
