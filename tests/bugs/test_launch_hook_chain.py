"""kernels/_launch.py's short path fell back on every launch: Triton 3.6's launch hooks are empty
HookChains, never None (docs/bugs/launch-hook-chain.md)."""

from triton import knobs
from triton.knobs import HookChain

from mhc_ops.kernels._launch import _hooked

RECORD = "docs/bugs/launch-hook-chain.md"


def test_an_empty_hook_chain_is_no_hook():
    assert not _hooked(knobs.runtime.launch_enter_hook) and not _hooked(knobs.runtime.launch_exit_hook)
    chain = HookChain()
    assert not _hooked(chain) and not _hooked(None)
    chain.add(print)
    assert _hooked(chain) and _hooked(lambda metadata: None)


def test_the_old_check_calls_triton_default_a_hook():
    def old(hook):
        return hook is not None

    assert old(knobs.runtime.launch_enter_hook)  # the mutant: "a profiler is installed", always
    assert not _hooked(knobs.runtime.launch_enter_hook)
