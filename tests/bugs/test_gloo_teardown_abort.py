"""A CPU data-parallel rank aborted at exit ("terminate called without an active exception"): gloo's
worker threads outlived destroy_process_group into the interpreter's finalization
(docs/bugs/gloo-teardown-abort.md)."""

import pathlib

import pytest

from tests.train.test_dist import ARGS, finalization_hook, gloo_threads_at_finalization, torchrun

RECORD = "docs/bugs/gloo-teardown-abort.md"

# The mutant: the old ending, sys.exit after teardown, i.e. through the interpreter's finalization.
OLD_EXIT = """
if "RANK" in os.environ:
    import sys
    import mhc_ops.train.loop
    mhc_ops.train.loop.exit_process = sys.exit
"""

needs_proc = pytest.mark.skipif(not pathlib.Path("/proc/self/task").is_dir(), reason="thread names need /proc")


@needs_proc
def test_the_old_exit_finalizes_with_gloo_threads_alive(tmp_path):
    """With the old ending, every rank of an FSDP run on gloo reaches the interpreter's finalization
    with gloo's worker threads alive, the condition under which one of them aborted the process: the
    check of tests/train/test_dist.py::test_two_processes_match_one sees it, deterministically (the
    abort itself needs a worker thread descheduled at the wrong moment: 1 run in 40 under load). FSDP,
    not DDP: since loop.py imports torch.distributed.checkpoint before init_process_group, DDP's group
    dies in destroy_process_group (the record says why); FSDP's lives on whatever the imports."""
    site = finalization_hook(tmp_path / "hook")
    (site / "sitecustomize.py").write_text((site / "sitecustomize.py").read_text() + OLD_EXIT)
    # Not the exit status: under this mutant a rank may, rarely, abort after the hook has run.
    proc = torchrun(*ARGS, "--dist", "fsdp", "--out", str(tmp_path / "run"), extra_path=site)
    alive = gloo_threads_at_finalization(tmp_path / "hook")
    assert sorted(alive) == ["rank0.txt", "rank1.txt"], (alive, proc.stderr[-3000:])
    assert all("pt_gloo_runloop" in threads for threads in alive.values()), alive
