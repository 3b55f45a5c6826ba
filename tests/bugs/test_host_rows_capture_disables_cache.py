"""benchmarks/host.py timed the GPU by capturing the call on the host loops' own weights, which turns
the weight cache off for them (docs/bugs/host-rows-capture-disables-cache.md)."""

import torch

from benchmarks import host
from benchmarks.shapes import Shape

RECORD = "docs/bugs/host-rows-capture-disables-cache.md"


def _separate(made: list) -> bool:
    """made: the Training of each make_call, host loop and GPU timing alternating: two setups, the
    host loops always on the first and the GPU timing always on the second."""
    loops, graphs = made[0::2], made[1::2]
    return len({id(t) for t in loops}) == 1 and len({id(t) for t in graphs}) == 1 and loops[0] is not graphs[0]


def test_graph_timing_never_sees_the_host_loop_weights(monkeypatch):
    made = []
    make_call = host.make_call

    def recording_make_call(training, variant):
        made.append(training)
        return make_call(training, variant)

    def gpu_us(build, device, quick):
        build()
        return 1.0, "cuda_graph", None

    def setup(shape, device):
        w = torch.ones(2, requires_grad=True)
        return host.Training(lambda: (w * w,), (w,), (torch.ones(2),))

    monkeypatch.setattr(host, "make_call", recording_make_call)
    monkeypatch.setattr(host, "host_loop_us", lambda fn, device, quick: (1.0, 1.0, 1))
    monkeypatch.setattr(host, "gpu_us", gpu_us)
    rows = host.run([Shape(1, 2, 4)], {"toy": setup}, {"device": torch.device("cpu"), "quick": True})
    assert [r["status"] for r in rows] == ["ok"] * len(host.VARIANTS)
    assert len(made) == 2 * len(host.VARIANTS) and _separate(made)


def test_the_check_fails_one_shared_setup():
    shared = object()
    assert not _separate([shared] * (2 * len(host.VARIANTS)))  # the old order: one setup for both
