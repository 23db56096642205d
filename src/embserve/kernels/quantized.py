"""Lookups on quantized tables: stored rows dequantized on the fly, float32 accumulation and
outputs.

A :class:`~embserve.storage.QuantizedTable` keeps its rows in a narrower type (layouts in
:mod:`embserve.storage`): float16 or bfloat16 values (two bytes each), or int8 / int4 codes with a
per-row scale and bias at the end of the row (FBGEMM's fused row-wise layouts). These kernels
read those bytes where they lie (a memory-mapped checkpoint, typically) and widen each value in
registers; no float32 copy of a row, let alone of the table, is made.

**Arguments.** ``data`` is the stored ``[rows, width]`` array (any dtype: it is read as bytes,
``row_bytes = data.shape[1] * data.itemsize``; :func:`stored_bytes` gives the ``uint8`` view the
lookups pass, so one compiled specialisation serves every storage type of a given id dtype).
``out`` is float32 and its last axis is the logical ``dim``. Every entry point raises
``ValueError`` unless ``data`` and ``out`` are C-ordered rows and ``row_bytes`` is exactly the
stored width of a ``dim``-wide row of its storage type (the scale and bias of an int8 / int4 row
sit at an offset that depends on ``dim``: any other width would read them from the wrong
bytes). Callers guarantee, as for :mod:`embserve.kernels.pooled` and
:mod:`embserve.kernels.sequence`, that every id is within ``[0, rows)``
(:func:`embserve.kernels.check.first_bad_id` runs first) and that ``splits`` are valid.

**Per-type entry points.** Each operation has one serial and one parallel entry point per storage
type (``gather_int8_serial``...; :data:`KERNELS` maps a storage name to its set). Each passes its
type as a constant into one shared inlined body, so every compiled kernel holds only its own
type's loops, and the argument lists match the float32 kernels' (the lookup calls either with
the same arguments).

**Widening.** float16 → float32 is LLVM's ``fpext half`` of the bits (``vcvtph2ps`` where the
CPU has F16C; exact). bfloat16 → float32 is the bits shifted into the upper half of a float32
(exact). int8 / int4 values are ``scale * q + bias`` in float32: a rounded product, then a
rounded sum, never fused (no fast-math), so a gathered row is bit-identical to
:func:`embserve.storage.dequantize_rows`. int4's float16 scale and bias widen exactly.

**Bags** (sum / mean / sqrtn, weighted or not; the rules of :mod:`embserve.kernels.pooled`:
TensorFlow's ``div_no_nan`` for zero denominators, the same overflow detection and
:func:`pooled_overflow` for the rare path). float16 / bfloat16 rows are widened and combined
exactly as the float32 kernels combine the widened table (``acc += w * v`` per element in bag
order, then one division): results are bit-identical to a float32 lookup on
``QuantizedTable.dequantize()``. int8 / int4 bags use the factored form::

    acc[j] += (w_i * s_i) * q_ij      per row and element (a product, a product, a sum)
    beta   += w_i * b_i               per row, one scalar
    out[j]  = (acc[j] + beta) / denom

The bias is added once per bag instead of once per element and row, which saves an addition per
element and row (FBGEMM instead computes ``fma(w s, q, buf + w b)`` for every element of every
row). Rounding differs from dequantize-then-sum (``acc[j] += w_i * fl(fl(s_i q_ij) + b_i)``):
the bias is never rounded into each value, and the bag's biases and scaled codes are summed in
two separate sequences. Both forms are within float32 summation error of the exact ``Σ w_i (s_i
q_ij + b_i)``: each product term carries at most ``(n + 2) u`` relative error (``u = 2**-24``:
the roundings of ``w s``, ``(w s) q``, ``n - 1`` additions and the final ``+ beta``), each bias
term at most ``(n + 1) u``, so for a bag of ``n`` rows ``|out - exact| <= (n + 2) u Σ |w_i|
(|s_i q_ij| + |b_i|)`` before the division (which adds one rounding), to first order. One
consequence: a bag whose codes times scales overflow float32 while the biases would cancel them
reports an overflow that dequantize-then-sum might not (such a table spans nearly float32's
whole range in one row).

**Sequences and sparse scatters** copy (or add) widened rows into place, as
:mod:`embserve.kernels.sequence` does: bit-identical to the float32 kernels on the dequantized
table for every type (int8 / int4 through ``fl(fl(s q) + b)`` per element).

Every loop prefetches all stored bytes of the row some ids ahead: ``PREFETCH_ROWS`` for gathers,
sequences and scatters (as the float32 kernels), :data:`BAG_PREFETCH_ROWS` for bags (measured on
quantized rows, which are short).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import llvmlite.ir as ir  # type: ignore[import-untyped]
import numba
import numpy as np
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from embserve.kernels._jit import jit, jit_inline, jit_parallel
from embserve.kernels._native import PREFETCH_ROWS, prefetch_row
from embserve.kernels.check import LAYOUT_MESSAGE, c_rows

__all__ = [
    "BF16",
    "F16",
    "INT4",
    "INT8",
    "KERNELS",
    "KINDS",
    "MEAN",
    "ROW_MESSAGE",
    "SQRTN",
    "SUM",
    "Kernels",
    "pooled_overflow",
    "stored_bytes",
    "stored_width",
]

# Combiners: the values of embserve.kernels.pooled.
SUM = 0
MEAN = 1
SQRTN = 2

# Storage types, as the kernels know them.
F16 = 1
BF16 = 2
INT8 = 3
INT4 = 4
KINDS: dict[str, int] = {"float16": F16, "bfloat16": BF16, "int8": INT8, "int4": INT4}

ROW_MESSAGE = "stored rows must be exactly as wide as a row of the output's dim in their type"
KIND_MESSAGE = "unknown storage kind"
OUT_MESSAGE = "quantized lookups write float32 outputs"

# Work units of the parallel drivers (as in pooled.py / sequence.py): 64 runs of bags holding
# equal numbers of ids; 64 ids per unit of a gather.
CHUNKS = 64
_GATHER_CHUNK = 64

# How many ids ahead the bag loops prefetch. Stored rows are short (72 bytes for int8 at dim 64,
# 36 for int4), so the 16 rows that suit 256-byte float32 rows keep too few bytes in flight.
# B=1024 bags of 1-40 uniform ids, 1M x 64 table (72 MB int8, not in the 32 MB L3), 4 KiB pages,
# one thread, per call (torch 2.x embedding_bag_byte_rowwise_offsets on the same rows: 200-210
# us): 8 ahead 334 us, 16 ahead 236, 32 ahead 168, 48 ahead 142, 64 ahead 104, 96 and 128 ahead
# 87; int4 (torch's 4-bit op 235-250 us): 16 ahead 252, 64 ahead 118, 96 / 128 ahead 122.
# Each run of bags first prefetches its first rows, which the loop's look-ahead never covers.
BAG_PREFETCH_ROWS = 64


def stored_bytes(data: np.ndarray) -> np.ndarray:
    """The ``uint8`` view ``[rows, row_bytes]`` of a C-ordered stored array (no copy)."""
    return data if data.dtype == np.uint8 else data.view(np.uint8)


def stored_width(kind: int, dim: int) -> int:
    """Bytes of one stored row of ``kind`` for a ``dim``-wide table."""
    if kind == INT8:
        return dim + 8
    if kind == INT4:
        return (dim + 1) // 2 + 4
    return 2 * dim


# ---------------------------------------------------------------------------------------------
# Intrinsics: widening and unaligned loads (numba has no half type and no unaligned load)


def _to_i16(builder: Any, value: Any) -> Any:
    i16 = ir.IntType(16)
    if value.type.width > 16:
        return builder.trunc(value, i16)
    if value.type.width < 16:
        return builder.zext(value, i16)
    return value


@intrinsic
def _half_to_f32_ir(typingctx: Any, bits: Any) -> Any:
    """The float32 value of IEEE half bits (the low 16 bits of an integer): exact."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float32(bits)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        half = builder.bitcast(_to_i16(builder, args[0]), ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return sig, codegen


@intrinsic
def _bf16_to_f32_ir(typingctx: Any, bits: Any) -> Any:
    """The float32 value of bfloat16 bits: the bits are its upper half (exact)."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float32(bits)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32 = ir.IntType(32)
        wide = builder.zext(_to_i16(builder, args[0]), i32)
        return builder.bitcast(builder.shl(wide, ir.Constant(i32, 16)), ir.FloatType())

    return sig, codegen


@intrinsic
def _load_f32_ir(typingctx: Any, address: Any) -> Any:
    """The float32 at byte ``address`` (any alignment: int8 rows put it at ``dim`` bytes)."""
    sig = types.float32(types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        pointer = builder.inttoptr(args[0], ir.FloatType().as_pointer())
        return builder.load(pointer, align=1)

    return sig, codegen


@intrinsic
def _load_half_ir(typingctx: Any, address: Any) -> Any:
    """The float16 at byte ``address`` (any alignment), widened to float32."""
    sig = types.float32(types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        pointer = builder.inttoptr(args[0], ir.IntType(16).as_pointer())
        bits = builder.load(pointer, align=1)
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _u8_pointer_ir(typingctx: Any, address: Any) -> Any:
    sig = types.CPointer(types.uint8)(types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint8)))

    return sig, codegen


@intrinsic
def _u16_pointer_ir(typingctx: Any, address: Any) -> Any:
    sig = types.CPointer(types.uint16)(types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint16)))

    return sig, codegen


# Typed Any for mypy (numba's stubs type an intrinsic's call with its typing context first).
_half_to_f32: Any = _half_to_f32_ir
_bf16_to_f32: Any = _bf16_to_f32_ir
_load_f32: Any = _load_f32_ir
_load_half: Any = _load_half_ir
_u8_pointer: Any = _u8_pointer_ir
_u16_pointer: Any = _u16_pointer_ir


# Register accumulation (the lever of embserve.kernels._native.sum_rows, for stored rows). A
# numba accumulator array costs a load and a store of the accumulator per row besides the row's
# own load; on 72-byte int8 rows that traffic is most of the work. This intrinsic emits the bag
# loop in LLVM IR with ``nvec`` <8 x float> accumulators held in registers, widening each block
# of 8 stored values in registers. Per element the operations and their order are those of the
# array loops (:func:`_accumulate`, then the combine in :func:`_bags`), so both paths give the
# same bits.


def _splat(builder: Any, value: Any) -> Any:
    vec = ir.VectorType(ir.FloatType(), 8)
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(
        one, ir.Constant(vec, ir.Undefined), ir.Constant(ir.VectorType(i32, 8), [0] * 8)
    )


@intrinsic
def _sum_block_ir(
    typingctx: Any,
    codes: Any,
    tails: Any,
    row_bytes: Any,
    ids: Any,
    weights: Any,
    start: Any,
    end: Any,
    out: Any,
    weighted: Any,
    nvec: Any,
    kind: Any,
    denom: Any,
) -> Any:
    """``out[0 : 8 nvec]`` = the combined block of the bag ``ids[start:end]``, divided by
    ``denom`` (1: not divided); whether a stored value is inf or NaN.

    Row ``k``'s block of ``8 nvec`` values starts at byte ``codes + ids[k] * row_bytes`` (the
    caller adds the block's byte offset) and, for int8 / int4, its scale and bias at ``tails +
    ids[k] * row_bytes``. float16 / bfloat16: ``acc += [w *] v``; int8 / int4: ``acc += (w s)
    * q`` and ``beta += w b``, stored as ``acc + beta``. ``weighted``, ``nvec`` and ``kind`` are
    literals; ``ids`` C-contiguous int32 / int64, ``weights`` float32 (read when weighted).
    The caller guarantees the ids are in range and ``denom`` is not 0.
    """
    if not (
        isinstance(nvec, types.IntegerLiteral)
        and isinstance(weighted, types.BooleanLiteral)
        and isinstance(kind, types.IntegerLiteral)
    ):
        return None
    for array, allowed in ((ids, (types.int32, types.int64)), (weights, None)):
        if not isinstance(array, types.Array) or array.layout != "C" or array.ndim != 1:
            return None
        if allowed is not None and array.dtype not in allowed:
            return None
    if weighted.literal_value and weights.dtype != types.float32:
        return None
    if not isinstance(denom, types.Float):
        return None
    n_vec = nvec.literal_value
    use_weights = weighted.literal_value
    the_kind = kind.literal_value
    if the_kind not in (F16, BF16, INT8, INT4):
        return None
    scaled = the_kind in (INT8, INT4)
    sig = types.boolean(
        codes, tails, row_bytes, ids, weights, start, end, out, weighted, nvec, kind, denom
    )

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i8 = ir.IntType(8)
        i16 = ir.IntType(16)
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, 8)
        byte_ptr = i8.as_pointer()
        argtys = signature.args

        def as_i64(index: int) -> Any:
            return context.cast(builder, args[index], argtys[index], types.int64)

        codes_v, tails_v, row_size, start_v, end_v, out_addr = (
            as_i64(i) for i in (0, 1, 2, 5, 6, 7)
        )
        ids_ary = context.make_array(argtys[3])(context, builder, args[3])
        ids_ptr = ids_ary.data
        n_ids = builder.extract_value(ids_ary.shape, 0)
        w_ptr = context.make_array(argtys[4])(context, builder, args[4]).data
        ahead = ir.Constant(i64, BAG_PREFETCH_ROWS)
        pf_ty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        pf_fn = cgutils.get_or_insert_function(builder.module, pf_ty, "llvm.prefetch.p0i8")
        hints = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]

        def id_at(index: Any) -> Any:
            value = builder.load(builder.gep(ids_ptr, [index]))
            return builder.sext(value, i64) if value.type.width < 64 else value

        def at(address: Any, offset: int, ty: Any) -> Any:
            moved = builder.add(address, ir.Constant(i64, offset)) if offset else address
            return builder.inttoptr(moved, ty.as_pointer())

        def widen_half(bits: Any) -> Any:
            return builder.fpext(builder.bitcast(bits, ir.HalfType()), f32)

        def block(address: Any, j: int) -> Any:
            """Values 8j .. 8j + 7 of the block at ``address``, as <8 x float>."""
            if the_kind == INT8:
                q = builder.load(at(address, 8 * j, ir.VectorType(i8, 8)), align=1)
                return builder.uitofp(q, vec)
            if the_kind == INT4:
                packed = builder.load(at(address, 4 * j, ir.VectorType(i8, 4)), align=1)
                lo = builder.and_(packed, ir.Constant(ir.VectorType(i8, 4), [15] * 4))
                hi = builder.lshr(packed, ir.Constant(ir.VectorType(i8, 4), [4] * 4))
                order = ir.Constant(ir.VectorType(i32, 8), [0, 4, 1, 5, 2, 6, 3, 7])
                return builder.uitofp(builder.shuffle_vector(lo, hi, order), vec)
            bits = builder.load(at(address, 16 * j, ir.VectorType(i16, 8)), align=1)
            if the_kind == F16:
                return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 8)), vec)
            wide = builder.shl(
                builder.zext(bits, ir.VectorType(i32, 8)),
                ir.Constant(ir.VectorType(i32, 8), [16] * 8),
            )
            return builder.bitcast(wide, vec)

        entry = builder.block
        head = builder.append_basic_block("qrows.head")
        body = builder.append_basic_block("qrows.body")
        fetch = builder.append_basic_block("qrows.prefetch")
        add = builder.append_basic_block("qrows.add")
        done = builder.append_basic_block("qrows.done")
        builder.branch(head)

        builder.position_at_end(head)
        k = builder.phi(i64)
        k.add_incoming(start_v, entry)
        beta = builder.phi(f32)
        beta.add_incoming(ir.Constant(f32, 0.0), entry)
        accs = []
        for _ in range(n_vec):
            acc = builder.phi(vec)
            acc.add_incoming(ir.Constant(vec, [0.0] * 8), entry)
            accs.append(acc)
        builder.cbranch(builder.icmp_signed("<", k, end_v), body, done)

        builder.position_at_end(body)
        k_ahead = builder.add(k, ahead)
        builder.cbranch(builder.icmp_signed("<", k_ahead, n_ids), fetch, add)

        builder.position_at_end(fetch)
        row_ahead = builder.mul(id_at(k_ahead), row_size)
        builder.call(pf_fn, [builder.inttoptr(builder.add(codes_v, row_ahead), byte_ptr), *hints])
        if scaled:
            tail_ahead = builder.add(tails_v, row_ahead)
            builder.call(pf_fn, [builder.inttoptr(tail_ahead, byte_ptr), *hints])
        builder.branch(add)

        builder.position_at_end(add)
        row = builder.mul(id_at(k), row_size)
        row_addr = builder.add(codes_v, row)
        w = None
        if use_weights:
            w = builder.load(builder.gep(builder.bitcast(w_ptr, f32.as_pointer()), [k]))
        new_beta = beta
        factor = None
        if scaled:
            tail = builder.add(tails_v, row)
            if the_kind == INT8:
                s = builder.load(at(tail, 0, f32), align=1)
                b = builder.load(at(tail, 4, f32), align=1)
            else:
                s = widen_half(builder.load(at(tail, 0, i16), align=1))
                b = widen_half(builder.load(at(tail, 2, i16), align=1))
            if w is not None:
                s = builder.fmul(s, w)
                b = builder.fmul(b, w)
            new_beta = builder.fadd(beta, b)
            factor = _splat(builder, s)
        elif w is not None:
            factor = _splat(builder, w)
        sums = []
        for j, acc in enumerate(accs):
            v = block(row_addr, j)
            if factor is not None:
                v = builder.fmul(v, factor) if not scaled else builder.fmul(factor, v)
            sums.append(builder.fadd(acc, v))
        k.add_incoming(builder.add(k, ir.Constant(i64, 1)), add)
        beta.add_incoming(new_beta, add)
        for acc, total in zip(accs, sums, strict=True):
            acc.add_incoming(total, add)
        builder.branch(head)

        builder.position_at_end(done)
        totals = list(accs)
        if scaled:
            offset = _splat(builder, beta)
            totals = [builder.fadd(acc, offset) for acc in accs]
        divisor = context.cast(builder, args[11], argtys[11], types.float32)
        divisors = _splat(builder, divisor)
        divide = builder.append_basic_block("qrows.divide")
        store = builder.append_basic_block("qrows.store")
        before = builder.block
        builder.cbranch(builder.fcmp_ordered("==", divisor, ir.Constant(f32, 1.0)), store, divide)
        builder.position_at_end(divide)
        quotients = [builder.fdiv(t, divisors) for t in totals]
        builder.branch(store)

        builder.position_at_end(store)
        values = []
        for total, quotient in zip(totals, quotients, strict=True):
            value = builder.phi(vec)
            value.add_incoming(total, before)
            value.add_incoming(quotient, divide)
            values.append(value)
        for j, value in enumerate(values):
            builder.store(value, at(out_addr, 32 * j, vec), align=4)
        # One finiteness test per block, as sum_rows: a false alarm (finite values whose tree
        # sum overflows) is cleared by the caller's exact pooled_overflow.
        level = list(values)
        while len(level) > 1:
            pairs = [builder.fadd(a, b) for a, b in zip(level[::2], level[1::2], strict=False)]
            level = pairs + ([level[-1]] if len(level) % 2 else [])
        probe = builder.fsub(level[0], level[0])
        bad = builder.fcmp_unordered("!=", probe, ir.Constant(vec, [0.0] * 8))
        mask = builder.bitcast(bad, i8)
        return builder.icmp_unsigned("!=", mask, ir.Constant(i8, 0))

    return sig, codegen


_sum_block: Any = _sum_block_ir


# ---------------------------------------------------------------------------------------------
# Shared inlined pieces


@jit_inline
def _width(kind, dim):  # type: ignore[no-untyped-def]
    if kind == INT8:
        return dim + 8
    if kind == INT4:
        return (dim + 1) // 2 + 4
    return 2 * dim


@jit_inline
def _check(data, kind, out):  # type: ignore[no-untyped-def]
    """The layout check of every entry point (see the module docstring)."""
    if not (c_rows(data) and c_rows(out)):
        raise ValueError(LAYOUT_MESSAGE)
    if data.shape[1] * data.itemsize != _width(kind, out.shape[-1]):
        raise ValueError(ROW_MESSAGE)
    if out.itemsize != 4:
        raise ValueError(OUT_MESSAGE)


@jit_inline
def _views(data):  # type: ignore[no-untyped-def]
    """``data``'s rows as bytes and as 16-bit words (C-ordered, checked), and its base address
    and row size in bytes."""
    base = data.ctypes.data
    row_bytes = data.shape[1] * data.itemsize
    t8 = numba.carray(_u8_pointer(base), (data.shape[0], row_bytes))
    t16 = numba.carray(_u16_pointer(base), (data.shape[0], row_bytes // 2))
    return t8, t16, base, row_bytes


@jit_inline
def _decode(kind, t8, t16, base, row_bytes, row, o, dim, add):  # type: ignore[no-untyped-def]
    """``o[:dim] = value(row)`` (``add`` false) or ``o[:dim] += value(row)`` (``add`` true);
    ``kind`` and ``add`` are constants of each caller."""
    if kind == F16:
        r = t16[row]
        for d in range(dim):
            v = _half_to_f32(r[d])
            if add:
                o[d] += v
            else:
                o[d] = v
    elif kind == BF16:
        r = t16[row]
        for d in range(dim):
            v = _bf16_to_f32(r[d])
            if add:
                o[d] += v
            else:
                o[d] = v
    elif kind == INT8:
        r = t8[row]
        tail = base + row * row_bytes + dim
        s = _load_f32(tail)
        b = _load_f32(tail + 4)
        for d in range(dim):
            v = s * np.float32(r[d]) + b
            if add:
                o[d] += v
            else:
                o[d] = v
    else:
        r = t8[row]
        pairs = dim // 2
        tail = base + row * row_bytes + (dim + 1) // 2
        s = _load_half(tail)
        b = _load_half(tail + 2)
        for p in range(pairs):
            byte = r[p]
            lo = s * np.float32(byte & 15) + b
            hi = s * np.float32(byte >> 4) + b
            if add:
                o[2 * p] += lo
                o[2 * p + 1] += hi
            else:
                o[2 * p] = lo
                o[2 * p + 1] = hi
        if dim & 1:
            v = s * np.float32(r[pairs] & 15) + b
            if add:
                o[dim - 1] += v
            else:
                o[dim - 1] = v


@jit_inline
def _accumulate(kind, t8, t16, base, row_bytes, row, acc, dim, w, weighted):  # type: ignore[no-untyped-def]
    """Add one row into the bag's accumulator: ``acc += w * v`` (float16 / bfloat16, ``w``
    only when ``weighted``), ``acc += (w * s) * q`` (int8 / int4). Returns the row's ``w * b``
    (0 for the 16-bit types), which the caller sums once per bag."""
    if kind == F16:
        r = t16[row]
        if weighted:
            for d in range(dim):
                acc[d] += _half_to_f32(r[d]) * w
        else:
            for d in range(dim):
                acc[d] += _half_to_f32(r[d])
        return np.float32(0)
    if kind == BF16:
        r = t16[row]
        if weighted:
            for d in range(dim):
                acc[d] += _bf16_to_f32(r[d]) * w
        else:
            for d in range(dim):
                acc[d] += _bf16_to_f32(r[d])
        return np.float32(0)
    r = t8[row]
    if kind == INT8:
        tail = base + row * row_bytes + dim
        s = _load_f32(tail)
        b = _load_f32(tail + 4)
        ws = s * w if weighted else s
        for d in range(dim):
            acc[d] += ws * np.float32(r[d])
        return b * w if weighted else b
    pairs = dim // 2
    tail = base + row * row_bytes + (dim + 1) // 2
    s = _load_half(tail)
    b = _load_half(tail + 2)
    ws = s * w if weighted else s
    for p in range(pairs):
        byte = r[p]
        acc[2 * p] += ws * np.float32(byte & 15)
        acc[2 * p + 1] += ws * np.float32(byte >> 4)
    if dim & 1:
        acc[dim - 1] += ws * np.float32(r[pairs] & 15)
    return b * w if weighted else b


@jit_inline
def _rows_nonfinite(out, b0, b1):  # type: ignore[no-untyped-def]
    """Whether rows ``b0 .. b1`` of ``out`` hold an inf or NaN (one flat branch-free pass; a
    copy of pooled.py's private helper, kept here so the two modules evolve apart)."""
    flat = out[b0:b1].ravel()
    bad = False
    for i in range(flat.shape[0]):
        v = flat[i]
        bad |= (v - v) != 0  # NaN exactly when v is NaN or ±inf
    return bad


@jit_inline
def _prime(data, ids, splits, b0, b1):  # type: ignore[no-untyped-def]
    """Prefetch the rows of the first ``BAG_PREFETCH_ROWS`` ids of bags ``b0 .. b1`` (the bag
    loops prefetch that far ahead of themselves, so without this a small request would read
    its first rows unprefetched, one miss after another)."""
    base = data.ctypes.data
    row_bytes = data.shape[1] * data.itemsize
    first = splits[b0]
    for k in range(first, min(first + BAG_PREFETCH_ROWS, splits[b1])):
        prefetch_row(base + ids[k] * row_bytes, row_bytes)


@jit_inline
def _bags(kind, data, ids, weights, splits, combiner, out, b0, b1, acc, weighted):  # type: ignore[no-untyped-def]
    """Reduce bags ``b0 .. b1``; whether an output value or a denominator is inf or NaN."""
    dim = out.shape[1]
    t8, t16, base, row_bytes = _views(data)
    last = ids.shape[0] - 1
    bad = False
    for b in range(b0, b1):
        start = splits[b]
        end = splits[b + 1]
        for d in range(dim):
            acc[d] = 0
        beta = np.float32(0)
        wsum = np.float32(0)
        for k in range(start, end):
            if k + BAG_PREFETCH_ROWS <= last:
                prefetch_row(base + ids[k + BAG_PREFETCH_ROWS] * row_bytes, row_bytes)
            w = weights[k] if weighted else np.float32(1)
            beta += _accumulate(kind, t8, t16, base, row_bytes, ids[k], acc, dim, w, weighted)
            if weighted:
                wsum += w if combiner == MEAN else w * w
        denom = np.float32(1)
        divide = False
        if weighted:
            if combiner != SUM:
                denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
                bad |= (denom - denom) != 0  # NaN exactly when denom is NaN or ±inf
                divide = True
        elif end > start and combiner != SUM:
            n = end - start
            denom = np.float32(n) if combiner == MEAN else np.float32(math.sqrt(n))
            divide = True
        o = out[b]
        if kind in (F16, BF16):  # the float32 kernels' arithmetic on the widened rows
            if divide:
                for d in range(dim):
                    o[d] = acc[d] / denom if denom != 0 else np.float32(0)
            else:
                for d in range(dim):
                    o[d] = acc[d]
        elif divide:
            for d in range(dim):
                o[d] = (acc[d] + beta) / denom if denom != 0 else np.float32(0)
        else:
            for d in range(dim):
                o[d] = acc[d] + beta
    return bad | _rows_nonfinite(out, b0, b1)


@jit_inline
def _chunk_start(splits, c, chunks):  # type: ignore[no-untyped-def]
    """First bag of chunk ``c`` when the ids are cut into ``chunks`` equal runs (a copy of
    pooled.py's private helper)."""
    n_bags = splits.shape[0] - 1
    if c <= 0:
        return 0
    if c >= chunks:
        return n_bags
    target = splits[n_bags] * c // chunks
    return min(np.searchsorted(splits, target), n_bags)


@jit_inline
def _sum_bag(kind, codes, tails, row_bytes, ids, weights, start, end, target, dim, weighted, denom):  # type: ignore[no-untyped-def]
    """One bag through :func:`_sum_block_ir`, in column blocks of 64 then 8 values (``dim`` a
    multiple of 8); whether an output value is inf or NaN."""
    bad = False
    col = 0
    while dim - col >= 64:
        at = codes + _code_bytes(kind, col)
        dest = target + 4 * col
        bad |= _sum_block(
            at, tails, row_bytes, ids, weights, start, end, dest, weighted, 8, kind, denom
        )
        col += 64
    while col < dim:
        at = codes + _code_bytes(kind, col)
        dest = target + 4 * col
        bad |= _sum_block(
            at, tails, row_bytes, ids, weights, start, end, dest, weighted, 1, kind, denom
        )
        col += 8
    return bad


@jit_inline
def _code_bytes(kind, col):  # type: ignore[no-untyped-def]
    """Byte offset of value ``col`` (a multiple of 8) in a stored row."""
    if kind == INT8:
        return col
    if kind == INT4:
        return col // 2
    return 2 * col


@jit_inline
def _bags_vector(kind, data, ids, weights, splits, combiner, out, b0, b1, weighted):  # type: ignore[no-untyped-def]
    """Bags ``b0 .. b1`` through the register kernel (``dim`` a multiple of 8); whether an
    output value or a denominator is inf or NaN."""
    dim = out.shape[1]
    base = data.ctypes.data
    row_bytes = data.shape[1] * data.itemsize
    tails = base + _code_bytes(kind, dim)  # int8 / int4: where scale and bias start
    out_base = out.ctypes.data
    out_bytes = dim * 4
    bad = False
    for b in range(b0, b1):
        start = splits[b]
        end = splits[b + 1]
        denom = np.float32(1)
        if weighted:
            if combiner != SUM:
                wsum = np.float32(0)
                for k in range(start, end):
                    w = weights[k]
                    wsum += w if combiner == MEAN else w * w
                denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
                bad |= (denom - denom) != 0
        elif end > start and combiner != SUM:
            n = end - start
            denom = np.float32(n) if combiner == MEAN else np.float32(math.sqrt(n))
        if denom == 0:  # div_no_nan: weights summing to 0 give zeros
            o = out[b]
            for d in range(dim):
                o[d] = 0
        else:
            target = out_base + b * out_bytes
            bad |= _sum_bag(
                kind, base, tails, row_bytes, ids, weights, start, end, target, dim, weighted, denom
            )
    return bad


@jit_inline
def _run(kind, data, ids, weights, splits, combiner, out, b0, b1, acc):  # type: ignore[no-untyped-def]
    _prime(data, ids, splits, b0, b1)
    if out.shape[1] % 8 == 0:
        if weights.shape[0] == 0:
            return _bags_vector(kind, data, ids, weights, splits, combiner, out, b0, b1, False)
        return _bags_vector(kind, data, ids, weights, splits, combiner, out, b0, b1, True)
    if weights.shape[0] == 0:
        return _bags(kind, data, ids, weights, splits, combiner, out, b0, b1, acc, False)
    return _bags(kind, data, ids, weights, splits, combiner, out, b0, b1, acc, True)


@jit_inline
def _pooled_serial(kind, data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    acc = np.empty(out.shape[1], dtype=np.float32)
    bad = _run(kind, data, ids, weights, splits, combiner, out, 0, splits.shape[0] - 1, acc)
    return 0 if bad else -1


@jit_inline
def _pooled_parallel(kind, data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    chunks = min(CHUNKS, max(splits.shape[0] - 1, 1))
    flagged = np.empty(chunks, dtype=np.bool_)
    for c in prange(chunks):
        acc = np.empty(out.shape[1], dtype=np.float32)
        b0 = _chunk_start(splits, c, chunks)
        b1 = _chunk_start(splits, c + 1, chunks)
        flagged[c] = _run(kind, data, ids, weights, splits, combiner, out, b0, b1, acc)
    for c in range(chunks):
        if flagged[c]:
            return _chunk_start(splits, c, chunks)
    return -1


@jit_inline
def _gather_range(kind, data, ids, out, i0, i1):  # type: ignore[no-untyped-def]
    dim = out.shape[1]
    t8, t16, base, row_bytes = _views(data)
    n = ids.shape[0]
    for i in range(i0, i1):
        if i + PREFETCH_ROWS < n:
            prefetch_row(base + ids[i + PREFETCH_ROWS] * row_bytes, row_bytes)
        _decode(kind, t8, t16, base, row_bytes, ids[i], out[i], dim, False)


@jit_inline
def _gather_serial(kind, data, ids, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    _gather_range(kind, data, ids, out, 0, ids.shape[0])


@jit_inline
def _gather_parallel(kind, data, ids, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    n = ids.shape[0]
    for c in prange((n + _GATHER_CHUNK - 1) // _GATHER_CHUNK):
        i0 = c * _GATHER_CHUNK
        _gather_range(kind, data, ids, out, i0, min(i0 + _GATHER_CHUNK, n))


@jit_inline
def _sequence_row(kind, data, ids, splits, out, b):  # type: ignore[no-untyped-def]
    length = out.shape[1]
    dim = out.shape[2]
    t8, t16, base, row_bytes = _views(data)
    start = splits[b]
    n = min(splits[b + 1] - start, length)
    for j in range(n):
        if j + PREFETCH_ROWS < n:
            prefetch_row(base + ids[start + j + PREFETCH_ROWS] * row_bytes, row_bytes)
        _decode(kind, t8, t16, base, row_bytes, ids[start + j], out[b, j], dim, False)
    for j in range(n, length):
        o = out[b, j]
        for d in range(dim):
            o[d] = 0


@jit_inline
def _sequence_serial(kind, data, ids, splits, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    for b in range(splits.shape[0] - 1):
        _sequence_row(kind, data, ids, splits, out, b)


@jit_inline
def _sequence_parallel(kind, data, ids, splits, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    for b in prange(splits.shape[0] - 1):
        _sequence_row(kind, data, ids, splits, out, b)


@jit_inline
def _scatter_row(kind, data, ids, cols, splits, out, b):  # type: ignore[no-untyped-def]
    """Add row ``b``'s entries into place; whether a position it touched is not finite."""
    dim = out.shape[2]
    t8, t16, base, row_bytes = _views(data)
    start = splits[b]
    end = splits[b + 1]
    for k in range(start, end):
        if k + PREFETCH_ROWS < end:
            prefetch_row(base + ids[k + PREFETCH_ROWS] * row_bytes, row_bytes)
        _decode(kind, t8, t16, base, row_bytes, ids[k], out[b, cols[k]], dim, True)
    bad = False
    for k in range(start, end):
        o = out[b, cols[k]]
        for d in range(dim):
            v = o[d]
            bad |= (v - v) != 0
    return bad


@jit_inline
def _scatter_serial(kind, data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    first = -1
    for b in range(splits.shape[0] - 1):
        if _scatter_row(kind, data, ids, cols, splits, out, b) and first < 0:
            first = b
    return first


@jit_inline
def _scatter_parallel(kind, data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    _check(data, kind, out)
    n = splits.shape[0] - 1
    flagged = np.zeros(n, dtype=np.bool_)
    for b in prange(n):
        flagged[b] = _scatter_row(kind, data, ids, cols, splits, out, b)
    for b in range(n):
        if flagged[b]:
            return b
    return -1


# ---------------------------------------------------------------------------------------------
# Entry points: one per operation, storage type and driver (the type a constant of each).
#
# gather_*(data, ids, out):                          out[i] = value(ids[i])
# sequence_*(data, ids, splits, out):                ragged rows packed left into out[B, L, D],
#                                                    cut at L, zero-padded
# pooled_*(data, ids, weights, splits, combiner, out) -> -1, or the bag from which
#                                                    pooled_overflow searches (weights of length
#                                                    0: unweighted)
# scatter_add_*(data, ids, cols, splits, out) -> -1 or the first row with a non-finite position;
#                                                    out[b, cols[k]] += value(ids[k]), out zeroed


@jit
def gather_f16_serial(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_serial(F16, data, ids, out)


@jit_parallel
def gather_f16_parallel(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_parallel(F16, data, ids, out)


@jit
def gather_bf16_serial(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_serial(BF16, data, ids, out)


@jit_parallel
def gather_bf16_parallel(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_parallel(BF16, data, ids, out)


@jit
def gather_int8_serial(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_serial(INT8, data, ids, out)


@jit_parallel
def gather_int8_parallel(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_parallel(INT8, data, ids, out)


@jit
def gather_int4_serial(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_serial(INT4, data, ids, out)


@jit_parallel
def gather_int4_parallel(data, ids, out):  # type: ignore[no-untyped-def]
    _gather_parallel(INT4, data, ids, out)


@jit
def sequence_f16_serial(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_serial(F16, data, ids, splits, out)


@jit_parallel
def sequence_f16_parallel(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_parallel(F16, data, ids, splits, out)


@jit
def sequence_bf16_serial(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_serial(BF16, data, ids, splits, out)


@jit_parallel
def sequence_bf16_parallel(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_parallel(BF16, data, ids, splits, out)


@jit
def sequence_int8_serial(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_serial(INT8, data, ids, splits, out)


@jit_parallel
def sequence_int8_parallel(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_parallel(INT8, data, ids, splits, out)


@jit
def sequence_int4_serial(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_serial(INT4, data, ids, splits, out)


@jit_parallel
def sequence_int4_parallel(data, ids, splits, out):  # type: ignore[no-untyped-def]
    _sequence_parallel(INT4, data, ids, splits, out)


@jit
def pooled_f16_serial(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_serial(F16, data, ids, weights, splits, combiner, out)


@jit_parallel
def pooled_f16_parallel(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_parallel(F16, data, ids, weights, splits, combiner, out)


@jit
def pooled_bf16_serial(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_serial(BF16, data, ids, weights, splits, combiner, out)


@jit_parallel
def pooled_bf16_parallel(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_parallel(BF16, data, ids, weights, splits, combiner, out)


@jit
def pooled_int8_serial(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_serial(INT8, data, ids, weights, splits, combiner, out)


@jit_parallel
def pooled_int8_parallel(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_parallel(INT8, data, ids, weights, splits, combiner, out)


@jit
def pooled_int4_serial(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_serial(INT4, data, ids, weights, splits, combiner, out)


@jit_parallel
def pooled_int4_parallel(data, ids, weights, splits, combiner, out):  # type: ignore[no-untyped-def]
    return _pooled_parallel(INT4, data, ids, weights, splits, combiner, out)


@jit
def scatter_add_f16_serial(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_serial(F16, data, ids, cols, splits, out)


@jit_parallel
def scatter_add_f16_parallel(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_parallel(F16, data, ids, cols, splits, out)


@jit
def scatter_add_bf16_serial(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_serial(BF16, data, ids, cols, splits, out)


@jit_parallel
def scatter_add_bf16_parallel(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_parallel(BF16, data, ids, cols, splits, out)


@jit
def scatter_add_int8_serial(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_serial(INT8, data, ids, cols, splits, out)


@jit_parallel
def scatter_add_int8_parallel(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_parallel(INT8, data, ids, cols, splits, out)


@jit
def scatter_add_int4_serial(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_serial(INT4, data, ids, cols, splits, out)


@jit_parallel
def scatter_add_int4_parallel(data, ids, cols, splits, out):  # type: ignore[no-untyped-def]
    return _scatter_parallel(INT4, data, ids, cols, splits, out)


@jit_inline
def _nonfinite(o, dim):  # type: ignore[no-untyped-def]
    bad = False
    for d in range(dim):
        v = o[d]
        bad |= (v - v) != 0
    return bad


@jit_inline
def _decode_any(kind, t8, t16, base, row_bytes, row, o, dim):  # type: ignore[no-untyped-def]
    """:func:`_decode` with ``kind`` known only at run time (the rare path)."""
    if kind == F16:
        _decode(F16, t8, t16, base, row_bytes, row, o, dim, False)
    elif kind == BF16:
        _decode(BF16, t8, t16, base, row_bytes, row, o, dim, False)
    elif kind == INT8:
        _decode(INT8, t8, t16, base, row_bytes, row, o, dim, False)
    else:
        _decode(INT4, t8, t16, base, row_bytes, row, o, dim, False)


@jit
def pooled_overflow(data, kind, ids, weights, splits, combiner, out, start):  # type: ignore[no-untyped-def]
    """:func:`embserve.kernels.pooled.pooled_overflow` for stored rows of ``kind``: after a
    driver returned ``start``, ``(bag, why)`` with ``why`` 1 when the bag's denominator
    overflowed, 0 when its output is not finite although every value of the rows it read is;
    ``(-1, 0)`` when every non-finite output came from a non-finite stored value (a float16 /
    bfloat16 inf or NaN, an int8 / int4 row whose values are not finite). The rare path."""
    if kind < F16 or kind > INT4:
        raise ValueError(KIND_MESSAGE)
    _check(data, kind, out)
    dim = out.shape[1]
    t8, t16, base, row_bytes = _views(data)
    row = np.empty(dim, dtype=np.float32)
    weighted = weights.shape[0] != 0
    for b in range(start, splits.shape[0] - 1):
        if weighted and combiner != SUM:
            wsum = np.float32(0)
            for k in range(splits[b], splits[b + 1]):
                w = weights[k]
                wsum += w if combiner == MEAN else w * w
            denom = wsum if combiner == MEAN else np.float32(math.sqrt(wsum))
            if not math.isfinite(denom):
                return b, 1
        if not _nonfinite(out[b], dim):
            continue
        rows_finite = True
        for k in range(splits[b], splits[b + 1]):
            _decode_any(kind, t8, t16, base, row_bytes, ids[k], row, dim)
            if _nonfinite(row, dim):
                rows_finite = False
        if rows_finite:
            return b, 0
    return -1, 0


class Kernels(NamedTuple):
    """The entry points of one storage type, with the float32 kernels' argument lists."""

    kind: int
    gather_serial: Any
    gather_parallel: Any
    sequence_serial: Any
    sequence_parallel: Any
    pooled_serial: Any
    pooled_parallel: Any
    scatter_add_serial: Any
    scatter_add_parallel: Any


#: Storage name → its kernels.
KERNELS: dict[str, Kernels] = {
    "float16": Kernels(
        F16,
        gather_f16_serial,
        gather_f16_parallel,
        sequence_f16_serial,
        sequence_f16_parallel,
        pooled_f16_serial,
        pooled_f16_parallel,
        scatter_add_f16_serial,
        scatter_add_f16_parallel,
    ),
    "bfloat16": Kernels(
        BF16,
        gather_bf16_serial,
        gather_bf16_parallel,
        sequence_bf16_serial,
        sequence_bf16_parallel,
        pooled_bf16_serial,
        pooled_bf16_parallel,
        scatter_add_bf16_serial,
        scatter_add_bf16_parallel,
    ),
    "int8": Kernels(
        INT8,
        gather_int8_serial,
        gather_int8_parallel,
        sequence_int8_serial,
        sequence_int8_parallel,
        pooled_int8_serial,
        pooled_int8_parallel,
        scatter_add_int8_serial,
        scatter_add_int8_parallel,
    ),
    "int4": Kernels(
        INT4,
        gather_int4_serial,
        gather_int4_parallel,
        sequence_int4_serial,
        sequence_int4_parallel,
        pooled_int4_serial,
        pooled_int4_parallel,
        scatter_add_int4_serial,
        scatter_add_int4_parallel,
    ),
}
