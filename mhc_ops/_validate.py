"""Input validation of the public ops, from one table per op (``TABLES``).

A table lists every tensor argument an op or its stages take: its shape in symbols of the anchor
(x, or sinkhorn's logits): its leading dims, ``n`` streams, ``D`` features, ``O`` = n*n + 2n
coefficient columns, ``nD`` = n*D, or an int; and its dtype (``DTYPE_RULES``). A check reads shapes,
dtypes and devices only (no host sync, no guard on the token count under torch.compile) and raises
``TypeError`` (not a tensor, dtype) or ``ValueError`` (shape, device) naming the argument and the
expected value, before anything runs. Adding an op is one ``OpTable`` in ``TABLES``
(docs/adding-an-op.md).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from dataclasses import dataclass

import torch

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# "act": bf16, fp16 or fp32; "x": the anchor's dtype; "fp32"; "float": any floating-point dtype.
DTYPE_RULES = ("act", "x", "fp32", "float")


@dataclass(frozen=True)
class Arg:
    dims: tuple[str | int, ...]  # after the anchor's leading dims (per_token) or the whole shape
    dtype: str = "float"  # one of DTYPE_RULES
    per_token: bool = True
    optional: bool = False  # None is allowed
    hint: str | None = None  # the shape as the docs write it, for the message: "[n*n + 2*n, n*D]"
    square: bool = False  # a matrix per token: unequal last two dims are named as such first


@dataclass(frozen=True, eq=False)  # hashed by identity: a key of the shapes' cache
class OpTable:
    anchor: str  # the argument whose shape fixes the leading dims, n and D
    forms: str  # the anchor's accepted shapes, for the message
    ranks: tuple[int, ...] | None  # the anchor's accepted number of dims (None: any with a leading dim)
    token_hint: str  # how a per-token argument's expected shape is explained
    args: dict[str, Arg]  # the anchor first

    def __post_init__(self):
        assert self.args[self.anchor].dims in (("n", "D"), ("n", "n")), "an anchor is [.., n, D] or [.., n, n]"

    def check(self, anchor, max_n: int | None = None, **tensors) -> tuple[tuple[int, ...], int, int | None]:
        """Validate the anchor and every named tensor (None only where optional) -> (lead, n, D).
        max_n: the largest n the implementation takes (None: any)."""
        lead, n, D = self._check_anchor(anchor, max_n)
        if not tensors:
            return lead, n, D
        # The leading dims may be symbolic under torch.compile: computed, not cached.
        plan = (_plan.__wrapped__ if torch.compiler.is_compiling() else _plan)(self, lead, n, D, anchor.dtype)
        device = anchor.device
        for name, t in tensors.items():
            want, dtypes, optional = plan[name]
            if t is None and optional:
                continue
            # One test on the hot path; the error path finds which part failed, in this order.
            if not isinstance(t, torch.Tensor) or t.dtype not in dtypes or t.shape != want or t.device != device:
                self._raise(name, t, want, anchor, lead, n, D, tensors)
        return lead, n, D

    def _check_anchor(self, t, max_n):
        a = self.anchor
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{a}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in ACT_DTYPES:
            raise TypeError(f"{a}: expected dtype bfloat16, float16 or float32, got {t.dtype}")
        shape = t.shape
        if len(shape) < 3 or (self.ranks is not None and len(shape) not in self.ranks):
            raise ValueError(f"{a}: expected shape {self.forms}, got {_shape_text(a, shape)}")
        n, last = shape[-2], shape[-1]
        if self.args[a].dims[1] == "n":
            if last != n:
                raise ValueError(f"{a}: expected square last two dims [..., n, n], got {list(shape)}")
            D = None
        else:
            D = last
            if n < 1 or D < 1:
                raise ValueError(f"{a}: expected n >= 1 and D >= 1, got n={n}, D={D}")
        if n < 1 or (max_n is not None and n > max_n):
            want = "n >= 1" if max_n is None else f"n from 1 to {max_n} (one token's n x n matrix in registers)"
            raise ValueError(f"{a}: expected {want}, got n={n}")
        return tuple(shape[:-2]), n, D

    def _raise(self, name, t, want, anchor, lead, n, D, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        _check_dtype(name, self.args[name].dtype, t.dtype, anchor.dtype, self.anchor)
        if t.shape != want:
            self._raise_shape_error(name, t, want, anchor, lead, n, D, tensors)
        raise ValueError(f"{name}: expected a tensor on {anchor.device} ({_of(self.anchor)} device), got {t.device}")

    def _raise_shape_error(self, name, t, want, anchor, lead, n, D, tensors):
        spec = self.args[name]
        if spec.square and (t.dim() < 2 or t.shape[-1] != t.shape[-2]):
            raise ValueError(f"{name}: expected a square [.., n, n] matrix per token, got shape {list(t.shape)}")
        self._blame_anchor(anchor, lead, n, D, tensors)
        env = {"anchor": self.anchor, "lead": list(lead), "n": n, "D": D}
        hint = f"{spec.hint} with n={n}, D={D}" if spec.hint else self.token_hint.format_map(env)
        raise ValueError(f"{name}: expected shape {list(want)} ({hint}), got {list(t.shape)}")

    def _blame_anchor(self, anchor, lead, n, D, tensors):
        """Raise against the anchor when at least two other arguments agree on an n (or D) that is not
        the anchor's and explain every argument: with phi and bias for n = 4, x with 3 streams is the
        one to fix, not phi."""
        others = {k: t for k, t in tensors.items() if isinstance(t, torch.Tensor)}
        implied: dict[str, int] = {}
        informers: dict[str, list[str]] = {"n": [], "D": []}
        for name, t in others.items():
            dims = self.args[name].dims
            got = _solve(dims, tuple(t.shape[-len(dims) :])) if t.dim() >= len(dims) else None
            if got is None or any(implied.get(k, v) != v for k, v in got.items()):
                return
            implied |= got
            for k in got:
                informers[k].append(name)
        mine = {"n": n, "D": D}
        off = [k for k, v in implied.items() if v != mine[k]]
        if not off or any(len(informers[k]) < 2 for k in off):
            return
        m, d = implied.get("n", n), implied.get("D", D)
        if any(t.shape != _shape(self.args[k], lead, m, d) for k, t in others.items()):
            return
        names = [f"{k} {list(others[k].shape)}" for k in others if any(k in informers[s] for s in off)]
        by = ", ".join(names[:-1]) + f" and {names[-1]}"
        want = " and ".join(f"{k}={implied[k]}" for k in off)
        got = " and ".join(f"{k}={mine[k]}" for k in off)
        raise ValueError(
            f"{self.anchor}: expected {want}, as {by} imply ({self.anchor} is {self.forms}), "
            f"got shape {list(anchor.shape)} with {got}"
        )


def _check_dtype(name: str, rule: str, dtype: torch.dtype, anchor_dtype: torch.dtype, anchor: str) -> None:
    if rule == "act":
        if dtype not in ACT_DTYPES:
            raise TypeError(f"{name}: expected dtype bfloat16, float16 or float32, got {dtype}")
        return
    if not dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got {dtype}")
    if rule == "fp32" and dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype torch.float32, got {dtype}")
    if rule == "x" and dtype != anchor_dtype:
        raise TypeError(f"{name}: expected dtype {anchor_dtype} ({_of(anchor)} dtype), got {dtype}")


def _of(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _shape_text(anchor: str, shape) -> str:
    # x's rank error has printed a tuple since the first release (tests/kernels match it); lists elsewhere.
    return str(tuple(shape)) if anchor == "x" else str(list(shape))


def _size(sym, n: int, D: int | None) -> int:
    if isinstance(sym, int):
        return sym
    return {"n": n, "D": D, "O": n * n + 2 * n, "nD": n * D if D is not None else None}[sym]


def _solve(dims: tuple, sizes: tuple) -> dict[str, int] | None:
    """The n and D that sizes (a shape's last len(dims) dims) imply -> {"n": .., "D": ..} (the symbols
    present), or None where no n and D give them. n first: nD needs it."""
    env: dict[str, int] = {}
    pairs = sorted(zip(dims, sizes), key=lambda p: p[0] in ("D", "nD"))
    for sym, size in pairs:
        size = int(size)
        if isinstance(sym, int):
            if size != sym:
                return None
            continue
        if sym == "O":
            root = math.isqrt(size + 1) - 1
            key, value = "n", root if root >= 0 and root * root + 2 * root == size else None
        elif sym == "nD":
            m = env.get("n")
            key, value = "D", size // m if m and size % m == 0 else None
        else:
            key, value = sym, size
        if value is None or env.get(key, value) != value:
            return None
        env[key] = value
    return env


_FLOATS = frozenset(d for d in vars(torch).values() if isinstance(d, torch.dtype) and d.is_floating_point)


def _dtypes(rule: str, anchor_dtype: torch.dtype) -> frozenset:
    return {"act": frozenset(ACT_DTYPES), "x": frozenset({anchor_dtype}), "fp32": frozenset({torch.float32}),
            "float": _FLOATS}[rule]  # fmt: skip


@functools.lru_cache(maxsize=256)  # one entry per (op, leading dims, n, D, dtype of the anchor): a model calls few
def _plan(table: OpTable, lead: tuple, n: int, D: int | None, anchor_dtype: torch.dtype) -> dict[str, tuple]:
    """name -> (expected shape, accepted dtypes, optional) for every argument of the table."""
    return {
        name: (_shape(spec, lead, n, D), _dtypes(spec.dtype, anchor_dtype), spec.optional)
        for name, spec in table.args.items()
    }


def _shape(spec: Arg, lead: tuple, n: int, D: int | None) -> tuple[int, ...]:
    return (*(lead if spec.per_token else ()), *(_size(s, n, D) for s in spec.dims))


# --- the tables ----------------------------------------------------------------------------------------------

_TOKEN_HINT = "{anchor} has leading dims {lead}, n={n}, D={D}"

MHC_PRE = OpTable(
    anchor="x",
    forms="[B, S, n, D] or [T, n, D]",
    ranks=(3, 4),
    token_hint=_TOKEN_HINT,
    args={
        "x": Arg(("n", "D"), "act"),
        "phi": Arg(("O", "nD"), "fp32", per_token=False, hint="[n*n + 2*n, n*D]"),
        "alpha": Arg((3,), "fp32", per_token=False, hint="[3] = (a_pre, a_post, a_res)"),
        "bias": Arg(("O",), "fp32", per_token=False, hint="[n*n + 2*n]"),
        "gamma": Arg(("n", "D"), "fp32", per_token=False, optional=True, hint="[n, D]"),
        # the delayed pre's previous coefficients (mhc_pre_delayed; None: the first sublayer)
        "h_pre_prev": Arg(("n",), "fp32", optional=True),
        # outputs and saved tensors, as the backward and the stages take them back
        "h_in": Arg(("D",)),
        "h_post": Arg(("n",)),
        "h_pre": Arg(("n",)),
        "inv_rms": Arg(()),
        "h_mix": Arg(("O",)),
        # upstream gradients
        "dh_in": Arg(("D",)),
        "dh_post": Arg(("n",)),
        "dh_res": Arg(("n", "n")),
        "grad_x_post": Arg(("n", "D"), optional=True),
        # backward stage intermediates
        "dinv_rms": Arg(()),
        "dh_mix": Arg(("O",)),
        "dh_pre": Arg(("n",)),
        "dh_pre2": Arg(("n",)),
        "dh_post2": Arg(("n",)),
        "dvecX_mm": Arg(("nD",)),
    },
)

SINKHORN = OpTable(
    anchor="logits",
    forms="[T, n, n] or [B, S, n, n]",
    ranks=None,
    token_hint="logits' shape",
    args={"logits": Arg(("n", "n"), "act"), "dP": Arg(("n", "n"), "act")},
)

MHC_POST = OpTable(
    anchor="x",
    forms="[B, S, n, D] or [T, n, D]",
    ranks=(3, 4),
    token_hint=_TOKEN_HINT,
    args={
        "x": Arg(("n", "D"), "act"),
        "h_res": Arg(("n", "n"), "fp32", square=True),
        "h_out": Arg(("D",), "x"),
        "h_post": Arg(("n",), "fp32"),
        "dout": Arg(("n", "D"), "x"),
    },
)

# By the golden registry's op name (golden/registry.py OPS).
TABLES = {"mhc_pre": MHC_PRE, "sinkhorn": SINKHORN, "mhc_post": MHC_POST}


# --- the checks the ops and stages call ------------------------------------------------------------------------


def check_inputs(x, **tensors) -> tuple[tuple[int, ...], int, int]:
    """mhc_pre's x and any of its named tensors (forward, backward and stage arguments) -> (lead, n, D)."""
    return MHC_PRE.check(x, **tensors)


def check_post_inputs(x, h_res, h_out, h_post, dout=None) -> tuple[tuple[int, ...], int, int]:
    """mhc_post's inputs; dout (the backward's) when given -> (lead, n, D)."""
    if dout is None:
        return MHC_POST.check(x, h_res=h_res, h_out=h_out, h_post=h_post)
    return MHC_POST.check(x, h_res=h_res, h_out=h_out, h_post=h_post, dout=dout)


def check_sinkhorn_inputs(logits, dP=None, *, iters, eps, max_n) -> tuple[tuple[int, ...], int]:
    """sinkhorn's logits [.., n, n] with 1 <= n <= max_n (None: any n), dP when given, iters and eps
    -> (lead, n)."""
    if dP is None:
        lead, n, _ = SINKHORN.check(logits, max_n)
    else:
        lead, n, _ = SINKHORN.check(logits, max_n, dP=dP)
    check_sinkhorn_iters(iters, eps)
    return lead, n


def check_sinkhorn_iters(iters, eps) -> None:
    """iters an int >= 1 and eps a finite number >= 0, else TypeError / ValueError naming them."""
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral):
        raise TypeError(f"iters: expected an int >= 1, got {iters!r} ({type(iters).__name__})")
    if iters < 1:
        raise ValueError(f"iters: expected an int >= 1, got {iters}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected a number >= 0, got {eps!r} ({type(eps).__name__})")
    # Comparisons only (no math.isinf): torch.compile traces this with eps possibly symbolic, and
    # `not (0 <= eps < inf)` also rejects NaN (docs/bugs/sinkhorn-validation-under-compile.md).
    if not 0 <= eps < math.inf:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps}")


def check_layer_input(x, n: int, D: int) -> None:
    """A HyperConnection(dim=D, n=n) takes x [.., n, D]; anything else is named against the module's
    n and D (a [B, S, D] input would otherwise read as S streams)."""
    if isinstance(x, torch.Tensor) and (x.dim() < 3 or tuple(x.shape[-2:]) != (n, D)):
        raise ValueError(
            f"x: expected shape [..., n, D] = [..., {n}, {D}] (HyperConnection(dim={D}, n={n})), got "
            f"{list(x.shape)}; a model expands its [.., D] input into the n streams once, with "
            f"mhc_ops.nn.expand_streams(h, {n})"
        )


def check_triton_sinkhorn_n(n: int, max_n: int | None) -> None:
    """hc_pre feeds x's n to sinkhorn: on the Triton sinkhorn, at most its max_n."""
    if max_n is not None and n > max_n:
        raise ValueError(f"x: expected n <= {max_n} for the Triton sinkhorn, got n={n} (put sinkhorn_fwd and "
                         "sinkhorn_bwd on the golden with stages=)")  # fmt: skip


def require_kernel_device(what: str, t: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors through the interpreter only. what: the
    choice that put a Triton kernel on t (a backend, stages, a stage)."""
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"{what}: running on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter) set before "
            "triton is imported (or move the tensors to a CUDA device)"
        )
