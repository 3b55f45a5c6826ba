"""mhc-ops: Triton kernels for mHC (manifold-constrained hyper-connections).

The ops ``mhc_pre``, ``sinkhorn`` and ``mhc_post`` (differentiable, torch.compile-traceable) and the
module ``mhc_ops.nn.HyperConnection``. Subpackages: ``mhc_ops.golden`` (PyTorch reference),
``mhc_ops.kernels`` (Triton stage kernels), ``mhc_ops.stages`` (stage registry and pipeline composer).
"""

# golden/, kernels/ and stages/ are this package's subpackages by packaging alone (pyproject.toml maps
# them): an installed wheel holds them inside mhc_ops/, a source checkout uses `pip install -e .`.
from .kernels._cache import clear as clear_weight_cache
from .ops import mhc_post, mhc_pre, mhc_pre_backward, mhc_pre_delayed, mhc_pre_forward, sinkhorn

__version__ = "0.2.0"
__all__ = [
    "clear_weight_cache",
    "mhc_post",
    "mhc_pre",
    "mhc_pre_backward",
    "mhc_pre_delayed",
    "mhc_pre_forward",
    "sinkhorn",
]
