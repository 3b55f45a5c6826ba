"""mhc-ops: Triton kernels for mHC (manifold-constrained hyper-connections).

The ops ``mhc_pre``, ``sinkhorn`` and ``mhc_post`` (differentiable, torch.compile-traceable) and the
module ``mhc_ops.nn.HyperConnection``. Subpackages: ``mhc_ops.golden`` (PyTorch reference),
``mhc_ops.kernels`` (Triton stage kernels), ``mhc_ops.stages`` (stage registry and pipeline composer).
"""

import pathlib as _pathlib

# An installed distribution places golden/, kernels/ and stages/ inside this package (pyproject maps
# them). In a source checkout they sit at the repository's top level, next to this folder: extending
# the package path lets `PYTHONPATH=.` find them there too.
_here = _pathlib.Path(__file__).resolve().parent
if not (_here / "golden").is_dir() and (_here.parent / "golden" / "__init__.py").is_file():
    __path__.append(str(_here.parent))

from .kernels._cache import clear as clear_weight_cache  # noqa: E402
from .ops import mhc_post, mhc_pre, mhc_pre_backward, mhc_pre_delayed, mhc_pre_forward, sinkhorn  # noqa: E402

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
