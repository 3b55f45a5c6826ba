"""mhc-ops under third-party model code, Liger-Kernel style: one call swaps a model's eager
hyper-connections for the mhc-ops kernels, keeping its parameters (names, shapes, checkpoints).

Each integration imports its library only when called: ``transformers`` is an optional extra
(``pip install mhc-ops[transformers]``).
"""

from .deepseek_v4 import SUPPORTED_TRANSFORMERS, apply_to_deepseek_v4, deepseek_v4_patched, revert_deepseek_v4

__all__ = ["SUPPORTED_TRANSFORMERS", "apply_to_deepseek_v4", "deepseek_v4_patched", "revert_deepseek_v4"]
