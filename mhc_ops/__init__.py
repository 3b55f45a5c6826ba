"""mhc-ops: Triton kernels for mHC (manifold-constrained hyper-connections).

Subpackages: ``mhc_ops.golden`` (PyTorch reference), ``mhc_ops.kernels`` (Triton stage kernels),
``mhc_ops.stages`` (stage registry and pipeline composer).
"""

import pathlib as _pathlib

# An installed distribution places golden/, kernels/ and stages/ inside this package (pyproject maps
# them). In a source checkout they sit at the repository's top level, next to this folder: extending
# the package path lets `PYTHONPATH=.` find them there too.
_here = _pathlib.Path(__file__).resolve().parent
if not (_here / "golden").is_dir() and (_here.parent / "golden" / "__init__.py").is_file():
    __path__.append(str(_here.parent))

from .ops import mhc_pre, mhc_pre_backward, mhc_pre_forward  # noqa: E402

__version__ = "0.1.0"
__all__ = ["mhc_pre", "mhc_pre_backward", "mhc_pre_forward"]
