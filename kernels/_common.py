"""What every stage launcher shares: launch-option checks, token views, grid sizing, shared tile math.

Input validation is mhc_ops/_validate.py's (one table per op); the checks here are the launch
contract's (block sizes, int32 tile spans), raising ``ValueError`` naming the value.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

# The mhc_pre stage modules validate through it (their imports name this module).
from mhc_ops._validate import check_inputs  # noqa: F401


def check_block(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two >= {minimum}, got {value!r}")


def check_maxnreg(value) -> None:
    """A kernel's register cap per thread (Triton's ``maxnreg`` launch option, ptxas's -maxrregcount): None
    (the compiler's choice) or an int in 32 .. 255. Fewer registers let more programs share an SM at
    the price of spills (benchmarks/compile_check.py --registers screens a cap on the CPU)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 32 <= value <= 255):
        raise ValueError(f"maxnreg: expected None or an int in 32..255, got {value!r}")


def check_loop_stages(value, name: str = "loop_stages", auto: bool = False) -> None:
    """A kernel loop's pipeline stages (``tl.range``'s num_stages): None (the compiler's choice: the launch's
    num_stages, for the loads that feed products alone), an int in 1 .. 4 (every load of the loop, that many
    iterations in flight: shared memory grows with it), or "auto" where the launcher has a rule (auto)."""
    if auto and isinstance(value, str) and value == "auto":
        return
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4):
        expected = 'None, "auto" or an int in 1..4' if auto else "None or an int in 1..4"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def tokens(t: torch.Tensor, trailing: int) -> torch.Tensor:
    """[..., *trailing dims] -> [T, *trailing dims]; a view whenever the leading dims allow one."""
    return t.reshape(-1, *t.shape[t.dim() - trailing :])


INT32_SPAN = 2**31  # element offsets within one tile are int32 (tile_offsets): they must stay below this


def check_tile_span(block_t: int, *views: torch.Tensor) -> None:
    """tile_offsets addresses a tile's [block_t, D] elements (tokens and the last dim; a stream's offset
    goes into the 64-bit base) by int32 offsets from its first token: block_t * stride(0) +
    (D - 1) * stride(-1) must stay below 2**31 for each [T, ..., D] view. Only a token stride near
    2**31 / block_t elements (a view into a tensor of many GB per token block) breaks it."""
    for v in views:
        span = block_t * v.stride(0) + (v.shape[-1] - 1) * v.stride(-1)
        if span >= INT32_SPAN:
            raise ValueError(
                f"a [T, ...] view with strides {list(v.stride())}: expected {block_t} tokens to span fewer than "
                f"2**31 elements, got {span}"
            )


def stream64(n: int, s_i: int) -> bool:
    """STREAM64 for stream_offset: whether i * s_i for a stream i < n can reach 2**31."""
    return (n - 1) * abs(s_i) >= INT32_SPAN


def static_dims(t: torch.Tensor, k: int) -> tuple[int, ...]:
    """t's last k dims (n, D) as ints: they select kernel code (constexprs, tiles). Under
    torch.compile with every dim dynamic this specializes the graph on them (a model has one n and
    D); the token count stays symbolic."""
    return tuple(int(s) for s in t.shape[t.dim() - k :])


def size_hint(v) -> int:
    """A token count as a plain int for launch decisions (split counts, tile choices). Under
    torch.compile it may be symbolic: its example value is taken without a guard, so one compiled
    graph serves every token count with the choices made for the first (each choice is valid for any
    T; only its speed was tuned for that one), as Inductor does for its own kernels."""
    if isinstance(v, torch.SymInt):
        hint = v.node.hint
        return int(hint) if hint is not None else int(v)
    return v


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the host's grid arithmetic: triton.cdiv and triton.next_power_of_2 are
    constexpr_functions, slow from host code (docs/perf.md, kernels/_common.py)."""
    return -(-a // b)


@functools.cache
def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), for the host (see cdiv)."""
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def o_pad(n: int) -> int:
    """Columns of a coefficient tile: O = n*n + 2*n padded to a power of two, >= 16 for tl.dot."""
    return max(16, next_power_of_2(n * n + 2 * n))


@functools.cache
def o_groups(n: int) -> tuple[int, int]:
    """Column groups (O_A, O_B) of a coefficient tile that a product runs over, where O = n*n + 2*n
    padded to one power of two wastes work: O_A the largest power of two <= O, O_B the rest padded
    (>= 16 for tl.dot); (o_pad(n), 0) where two groups are no narrower. n = 6: 32 + 16 columns, not
    64; n = 8: 64 + 16, not 128 (docs/perf.md, kernels/_common.py)."""
    O = n * n + 2 * n
    a = 1 << (O.bit_length() - 1)
    b = max(16, next_power_of_2(O - a)) if O > a else 0
    return (a, b) if a >= 16 and b and a + b < o_pad(n) else (o_pad(n), 0)


@functools.cache
def n_pad(n: int) -> int:
    """Streams of a [BLOCK_T, N_PAD, BLOCK_D] stream tile (stream_tile): n padded to a power of two."""
    return next_power_of_2(n)


# Elements of a [BLOCK_T, N_PAD, BLOCK_D] stream tile: 64 fp32 registers per thread at 4 warps.
STREAM_TILE = 8192


def stream_block_d(block_t: int, n: int) -> int:
    """BLOCK_D of a stream tile of block_t tokens: STREAM_TILE elements, 16 to 128 columns."""
    return max(16, min(128, STREAM_TILE // (block_t * n_pad(n))))


def default_block_d(n: int, block_d: int | None) -> int:
    """BLOCK_D for kernels whose tiles meet a [BLOCK_D, O_PAD] operand: 128 columns at n <= 4,
    fewer as O_PAD grows, so the pipelined tiles stay inside shared memory (docs/perf.md, kernels/_common.py)."""
    return block_d if block_d is not None else max(16, min(128, 4096 // o_pad(n)))


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device; 4 for the interpreter's CPU tensors (a stand-in, so grids still split)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def token_splits(device: torch.device, other_programs: int, token_blocks: int, max_splits: int = 64) -> int:
    """How many token ranges a parameter-gradient reduction is split into: about sixteen programs per
    SM (fewer leave a tail wave: docs/perf.md, kernels/_common.py), at most one per token block and at
    most max_splits (the caller's bound on the per-split partials' memory)."""
    want = math.ceil(16 * sm_count(device) / max(other_programs, 1))
    return max(1, min(want, token_blocks, max_splits))


def g_split_cap(T: int, itemsize: int, O: int, nD: int) -> int:
    """At most as many G partials ([O, nD] fp32 each) as fit in 5 % of x's bytes (T tokens of nD
    elements of itemsize bytes)."""
    return max(1, T * nD * itemsize // (20 * O * nD * 4))


@triton.jit
def fp32_dot(a, b):
    """An fp32-grade product of fp32 tiles on tensor cores: three TF32 products (a plain TF32 dot
    fails the accuracy rule). The interpreter computes it in fp32."""
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def stream_offset(i, s_i, STREAM64: tl.constexpr):
    """i * s_i, stream i's element offset: in int64 where it can reach 2**31 (STREAM64, from stream64 on
    the host: a stream-major view, docs/bugs/stream-stride-int32.md), else in int32, which compiles to
    fewer registers (docs/perf.md, kernels/_common.py)."""
    if STREAM64:
        off = tl.cast(i, tl.int64) * s_i
    else:
        off = i * s_i
    return off


@triton.jit
def tile_offsets(BLOCK_T: tl.constexpr, d, s_t, s_d):
    """[BLOCK_T, BLOCK_D] int32 element offsets of tile rows 0 .. BLOCK_T-1 and columns d, from the
    tile's first token: loop-invariant, so a loop over token blocks adds only its scalar 64-bit base
    (token0 * s_t) per tile instead of rebuilding [BLOCK_T, BLOCK_D] 64-bit offsets (check_tile_span
    keeps them in range)."""
    return tl.arange(0, BLOCK_T)[:, None] * s_t + d[None, :] * s_d


@triton.jit
def stream_tile(x_ptr, rows, row_mask, d, d_mask, n, sx_t, sx_i, sx_d, N_PAD: tl.constexpr):
    """[BLOCK_T, N_PAD, BLOCK_D] tile x[rows, i, d] of all n streams in x's dtype, zero for i >= n. One
    load for every stream: a loop over a runtime n issues one load at a time and waits for each
    (docs/perf.md, kernels/_common.py)."""
    i = tl.arange(0, N_PAD)
    offs = rows[:, None, None] * sx_t + i[None, :, None].to(tl.int64) * sx_i + d[None, None, :] * sx_d
    mask = row_mask[:, None, None] & (i < n)[None, :, None] & d_mask[None, None, :]
    return tl.load(x_ptr + offs, mask=mask, other=0.0)


@triton.jit
def pre_columns(tile, cols, n, N_PAD: tl.constexpr):
    """[BLOCK_T, O_PAD] coefficient tile -> [BLOCK_T, N_PAD] tile of its pre columns 0 .. n-1 (zero
    past n). A handful of reductions, once per program, so the streams' loops need none."""
    j = tl.arange(0, N_PAD)
    out = tl.zeros([tile.shape[0], N_PAD], dtype=tl.float32)
    for c in tl.static_range(N_PAD):
        col = tl.sum(tl.where(cols[None, :] == c, tile, 0.0), axis=1)
        out = tl.where((j[None, :] == c) & (c < n), col[:, None], out)
    return out


@triton.jit
def from_pre_columns(v, cols, n, O_PAD: tl.constexpr):
    """pre_columns' inverse: [BLOCK_T, N_PAD] -> [BLOCK_T, O_PAD] with v[:, i] in column i < n, zero
    elsewhere."""
    N_PAD: tl.constexpr = v.shape[1]
    j = tl.arange(0, N_PAD)
    out = tl.zeros([v.shape[0], O_PAD], dtype=tl.float32)
    for c in tl.static_range(N_PAD):
        col = tl.sum(tl.where(j[None, :] == c, v, 0.0), axis=1)
        out = tl.where((cols[None, :] == c) & (c < n), col[:, None], out)
    return out


@triton.jit
def load_coeff_part(ptr, rows, row_mask, cols, lo, width):
    """A [BLOCK_T, O_PAD] tile holding a contiguous per-token [T, width] tensor in columns
    lo .. lo+width of the coefficient layout [pre (n) | post (n) | res (n*n)]; zero elsewhere."""
    in_part = (cols >= lo) & (cols < lo + width)
    offs = rows[:, None] * width + (cols - lo)[None, :]
    return tl.load(ptr + offs, mask=row_mask[:, None] & in_part[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_coeff_part(ptr, tile, rows, row_mask, cols, lo, width):
    """Store columns lo .. lo+width of a coefficient tile into a contiguous [T, width] tensor."""
    in_part = (cols >= lo) & (cols < lo + width)
    offs = rows[:, None] * width + (cols - lo)[None, :]
    tl.store(ptr + offs, tile, mask=row_mask[:, None] & in_part[None, :])


@triton.jit
def alpha_per_col(alpha_ptr, cols, n):
    """[O_PAD] vector: a_pre on pre columns, a_post on post columns, a_res on res columns."""
    a_pre = tl.load(alpha_ptr).to(tl.float32)
    a_post = tl.load(alpha_ptr + 1).to(tl.float32)
    a_res = tl.load(alpha_ptr + 2).to(tl.float32)
    return tl.where(cols < n, a_pre, tl.where(cols < 2 * n, a_post, a_res))


@triton.jit
def round_to(v, dtype: tl.constexpr):
    """fp32 tile -> dtype, rounding to nearest even. The interpreter truncates fp32 -> bf16
    (docs/bugs/interpreter-bf16-truncation.md), so there the rounding is done on the bits and the cast
    then only drops zero bits; a GPU's own conversion rounds to nearest even (cvt.rn), the same values in
    far fewer instructions (docs/perf.md, Performance XIII)."""
    if dtype == tl.bfloat16 and ROUND_ON_BITS:
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        v = tl.where(v != v, v, bits.to(tl.float32, bitcast=True))  # a NaN stays a NaN
    return v.to(dtype)


@triton.jit
def split2_bf16(v):
    """fp32 tile -> (hi, lo) bf16 tiles with hi + lo == v to 16 bits: each part carries the next 8."""
    hi = v.to(tl.bfloat16)
    return hi, (v - hi.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def split3_bf16(v):
    """fp32 tile -> (hi, mid, lo) bf16 tiles whose fp32 sum is v: all 24 bits of an fp32
    significand (split_bf16_host is the same split in torch)."""
    hi = v.to(tl.bfloat16)
    mid, lo = split2_bf16(v - hi.to(tl.float32))
    return hi, mid, lo


@triton.jit
def bf16_dot(a, b, acc, INTERPRET: tl.constexpr):
    """acc + a @ b for bf16 tiles on tensor cores. Triton's interpreter multiplies the raw bit
    patterns of bf16 dot operands (upstream issue 11584), so there the exact fp32 upcasts are used."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def split_dot_bf16(a, b, INTERPRET: tl.constexpr):
    """a @ b at fp32 grade where one operand is bf16 and exact (such as x) and the other fp32: the fp32
    one is split into three bf16 parts, three bf16 tensor-core products. The product starts from a
    zero accumulator and the caller adds it in fp32: chaining a large running sum through the tensor
    cores' accumulator loses bits (docs/perf.md, kernels/_common.py)."""
    # if/else with one return: Triton compiles the code after an early return for either branch.
    acc = tl.zeros([a.shape[0], b.shape[1]], dtype=tl.float32)
    if a.dtype == tl.bfloat16:
        hi, mid, lo = split3_bf16(b)
        acc = bf16_dot(a, lo, acc, INTERPRET)
        acc = bf16_dot(a, mid, acc, INTERPRET)
        acc = bf16_dot(a, hi, acc, INTERPRET)
    else:
        hi, mid, lo = split3_bf16(a)
        acc = parts_dot(hi, mid, lo, b, INTERPRET)
    return acc


@triton.jit
def parts_dot(hi, mid, lo, b, INTERPRET: tl.constexpr):
    """(hi + mid + lo) @ b for the bf16 parts of an fp32 left operand (split3_bf16) and a bf16 b: three
    bf16 products from a zero accumulator, the small parts first (split_dot_bf16's order)."""
    acc = bf16_dot(lo, b, tl.zeros([hi.shape[0], b.shape[1]], dtype=tl.float32), INTERPRET)
    acc = bf16_dot(mid, b, acc, INTERPRET)
    return bf16_dot(hi, b, acc, INTERPRET)


@triton.jit
def split_dot_16bit(a_hi, a_lo, b_hi, b_lo, INTERPRET: tl.constexpr):
    """a @ b for fp32 tiles given as two-part bf16 splits (split2_bf16), to about 2^-16
    relative: three bf16 products (hi*hi + hi*lo + lo*hi). Enough for a result that is rounded to a
    16-bit float next (dx). The caller splits, so a loop-invariant operand is split once."""
    acc = bf16_dot(a_lo, b_hi, tl.zeros([a_hi.shape[0], b_hi.shape[1]], dtype=tl.float32), INTERPRET)
    acc = bf16_dot(a_hi, b_lo, acc, INTERPRET)
    return bf16_dot(a_hi, b_hi, acc, INTERPRET)


def split_bf16_host(v: torch.Tensor) -> torch.Tensor:
    """fp32 tensor -> [3, *v.shape] bf16 parts hi, mid, lo with hi + mid + lo == v (split3_bf16)."""
    hi = v.to(torch.bfloat16)
    r = v - hi.float()
    mid = r.to(torch.bfloat16)
    return torch.stack([hi, mid, (r - mid.float()).to(torch.bfloat16)])


# Triton decides when a kernel is defined (at import) whether it runs through the interpreter, so the
# variable's value at import is the one that holds; read once, not per launch.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROUND_ON_BITS = tl.constexpr(_INTERPRET)  # round_to's bf16 rounding on the bits: the interpreter's cast truncates


def interpreting() -> bool:
    """True when kernels run through Triton's interpreter (TRITON_INTERPRET=1 when triton was imported)."""
    return _INTERPRET


@triton.jit
def stamp(ptr, k, after, ON: tl.constexpr):
    """A kernel timeline's mark (benchmarks/decode_timeline.py): with ON, ptr[2k] = %globaltimer (ns, GPU-wide)
    and ptr[2k + 1] = %clock64 (this SM's cycles), read once `after` (any tile or scalar) is computed: its
    sum is an operand of the reads, so the compiler cannot hoist them above it. Without ON, nothing (and the
    interpreter, which runs no PTX, only ever passes ON = False)."""
    if ON:
        dep = tl.sum(tl.ravel(after + tl.zeros([1], dtype=tl.int32)).to(tl.float32), axis=0).to(tl.int32, bitcast=True)
        ns = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer; // $1", "=l,r", [dep], dtype=tl.int64, is_pure=False, pack=1)
        tl.store(ptr + 2 * k, ns)
        cycles = tl.inline_asm_elementwise("mov.u64 $0, %clock64; // $1", "=l,r", [dep], dtype=tl.int64, is_pure=False,
                                           pack=1)  # fmt: skip
        tl.store(ptr + 2 * k + 1, cycles)
