"""Fixtures of the integration tests: one thread, no class patch left behind, a fresh Dynamo."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Matrices of a few dozen rows: threads only contend (2 s a step instead of 0.1 s on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_class_patch_left():
    """A test that patches the classes reverts them, even when it fails."""
    yield
    from mhc_ops.integrations import _patch, deepseek_v4, glm5_next

    for family in (deepseek_v4.FAMILY, glm5_next.FAMILY):
        _patch.revert(family, None)


@pytest.fixture
def fresh_dynamo():
    """Compiled code of one test neither reused nor counted by another."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
