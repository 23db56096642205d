"""Two low-level helpers numba does not offer: software prefetch and a table seen through an
address.

* :func:`prefetch` asks the CPU to start loading a cache line that a later iteration will read.
  Random row gathers are latency-bound (each row is a DRAM miss, often a TLB miss too), and the
  hardware prefetcher cannot guess the next id. Issuing the loads ``PREFETCH_ROWS`` ids ahead
  keeps several misses in flight per core.
* :func:`table_at` rebuilds a ``[rows, dim]`` float32 array from its base address, so one kernel
  call can read many tables whose addresses sit in an int64 array (a numba function cannot take
  a list of arrays without per-call boxing costs of microseconds per array). The caller keeps the
  arrays alive and vouches for their shape, dtype and C order.
"""

from __future__ import annotations

from typing import Any

import llvmlite.ir as ir  # type: ignore[import-untyped]
import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from embserve.kernels._jit import jit_inline

__all__ = [
    "BAG_PREFETCH_ROWS",
    "PREFETCH_ROWS",
    "address_of",
    "prefetch",
    "prefetch_row",
    "sum_rows",
    "table_at",
]

# How many ids ahead to prefetch. Bags of 1-40 ids from a 1M x 64 table, B=1024, 2 threads:
# no prefetch 728 us, 8 ahead 501, 16 ahead 557 (Zipf ids); uniform ids: 659 / 370 / 387.
# 26 x 1024 dense rows from 26 x 250k x 64 tables, 2 threads: 1,354 us without, 841 us 8 ahead,
# 884 us 16 ahead. One thread, bags, 1M rows: 16 ahead 15.7 ns/row, 24 ahead 17.8.
PREFETCH_ROWS = 16

# How many ids ahead the bag kernel (:func:`sum_rows`) prefetches, every cache line of the row.
# Measured after it prefetched every line (it used to prefetch only the first): bags of 1-40 ids,
# B=1024, one thread, the bag kernel's time against torch 2.13 embedding_bag's in the same process
# (torch / ours, > 1 is faster), uniform ids of a 4M x 64 table on 4 KiB pages, sum: 16 ahead
# 1.09, 32 ahead 1.29, 48 ahead 1.30, 64 ahead 1.22; of a 100k-row table (25 MiB, in the L3):
# 1.10 / 1.35-1.41 / 1.50; of a 4,096-row table (1 MiB): 0.88 / 0.95 / 0.84. Gathers and
# sequences keep PREFETCH_ROWS: they were not measured again.
BAG_PREFETCH_ROWS = 32


@intrinsic
def prefetch(typingctx: Any, address: Any) -> Any:
    """``llvm.prefetch(address, read, high locality, data)``: a hint, never a fault."""
    sig = types.void(types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        pointer = builder.inttoptr(args[0], byte_ptr)
        builder.call(fn, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _f32_pointer(typingctx: Any, address: Any) -> Any:
    sig = types.CPointer(types.float32)(types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@jit_inline
def table_at(address, rows, dim):  # type: ignore[no-untyped-def]
    """The float32 ``[rows, dim]`` C-ordered array at ``address`` (no copy, no ownership)."""
    return numba.carray(_f32_pointer(address), (rows, dim))  # type: ignore[call-arg]


@jit_inline
def prefetch_row(address, row_bytes):  # type: ignore[no-untyped-def]
    """Prefetch every cache line the row at ``address`` touches (five for a 256-byte row that
    starts mid-line, as rows of TensorFlow's checkpoint layout do: the data begins 8 bytes into
    the file). 26 x 1024 rows gathered from a mapped checkpoint table, 2 threads, 16 ids ahead:
    first line only 1,531-1,886 us, every line 1,424-1,680 us (two interleaved runs)."""
    for offset in range(0, row_bytes + 63, 64):
        prefetch(address + offset)  # type: ignore[call-arg]


def address_of(array: np.ndarray) -> int:
    """Base address of ``array``'s data (for :func:`table_at`)."""
    return int(array.ctypes.data)


# Register accumulation for bags. numba cannot keep a row-sized accumulator in registers: summed
# into an array, every row costs a load and a store of the accumulator besides its own loads,
# which fills the out-of-order window with work and leaves fewer DRAM misses in flight. This
# intrinsic emits the bag loop in LLVM IR with the accumulators held in registers, as vectors of
# 16 floats (one AVX-512 register; LLVM splits them into two AVX2 registers on CPUs without it).
# Additions stay in bag order per element, so results are bit-identical to the loop.
# Bags of 1-40 Zipf ids of a 4M x 64 table (memory-mapped, 4 KiB pages), B=1024, 1 thread,
# same process: array accumulator 559 us, registers 397 us, torch 2.13 embedding_bag 400 us.
#
# Issue 12 (float32 bags behind torch's embedding_bag: 0.82x weighted sum, 0.93x sum): the kernel
# prefetched only the FIRST cache line of the row BAG_PREFETCH_ROWS ids ahead, while a 256-byte
# row touches four lines, five when it starts mid-line as TensorFlow's checkpoint layout puts it
# (8 bytes into the data file); the other lines were demand misses, one row at a time. FBGEMM's
# kernel (behind torch's embedding_bag) prefetches every line. A weighted bag has more work per
# row (a multiply besides the add: no fused multiply-add, which would round once and change the
# results), so it could hide fewer misses and lost more. Now every line of the row is prefetched,
# 32 ids ahead (16 was tuned for the first-line prefetch), and the accumulators are 16 floats
# wide (half the instructions per row on AVX-512). Same process, one thread, torch / ours, bags
# of 1-40 uniform ids of a 4M x 64 table on 4 KiB anonymous pages: sum 0.92 -> 1.31, weighted
# sum 0.79 -> 1.38, mean 1.09 -> 1.62; Zipf ids: sum 0.95 -> 1.36-1.45, weighted 0.83 -> 1.36-1.45.
# Callers cover a row in blocks of 64 and 16 floats: four instantiations per kernel (two block
# sizes, weighted or not) keep compile time near what it was (one per dim in 8..256 took the
# parallel pooled kernel from 5.1 s to 9.5 s); a runtime weighted flag cost 1.7x in speed.


@intrinsic
def sum_rows(
    typingctx: Any,
    table: Any,
    row_bytes: Any,
    ids: Any,
    weights: Any,
    start: Any,
    end: Any,
    out: Any,
    weighted: Any,
    nvec: Any,
    denom: Any,
) -> Any:
    """``out[0 : 8 * nvec] = Σ_k [weights[k] *] row_k[0 : 8 * nvec] / denom`` for ``k`` in
    ``[start, end)``, where ``row_k`` starts at address ``table + ids[k] * row_bytes``; returns
    whether any stored value is inf or NaN.

    ``table`` and ``out`` are addresses of float32 data, ``ids`` an int32 / int64 array,
    ``weights`` a float32 array read only when ``weighted`` (a literal bool) is true, ``nvec`` a
    literal int, ``denom`` a float32 divisor (1 skips the division: the sum is stored as is).
    Every cache line of the row ``BAG_PREFETCH_ROWS`` ids ahead is prefetched. The caller
    guarantees every id is in range and ``denom`` is not 0. The division (IEEE, as numba's) and
    the finiteness test run on the accumulators in registers, before the one store: the
    overflow check of issue 10 costs a few vector instructions per bag instead of a second pass
    over the row (measured on B=1024 bags of 1-40 ids, dim 64, cache-resident table: a numba
    pass after the store made mean 55% slower).
    """
    if not isinstance(nvec, types.IntegerLiteral) or not isinstance(weighted, types.BooleanLiteral):
        return None
    # The IR indexes ids / weights by element from their data pointers: C-contiguous signed ids
    # and float32 weights only (anything else is a compile error, never a wrong read).
    for array, allowed in ((ids, (types.int32, types.int64)), (weights, None)):
        if not isinstance(array, types.Array) or array.layout != "C" or array.ndim != 1:
            return None
        if allowed is not None and array.dtype not in allowed:
            return None
    if weighted.literal_value and weights.dtype != types.float32:
        return None
    if not isinstance(denom, types.Float):
        return None
    # nvec counts 8-float blocks; an even count is summed in 16-float vectors.
    width = 16 if nvec.literal_value % 2 == 0 else 8
    n_vec = nvec.literal_value * 8 // width
    use_weights = weighted.literal_value
    sig = types.boolean(table, row_bytes, ids, weights, start, end, out, weighted, nvec, denom)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, width)
        broadcast = ir.Constant(ir.VectorType(i32, width), [0] * width)
        zeros = ir.Constant(vec, [0.0] * width)
        byte_ptr = ir.IntType(8).as_pointer()
        argtys = signature.args

        def as_i64(index: int) -> Any:
            return context.cast(builder, args[index], argtys[index], types.int64)

        table_addr, row_size, start_v, end_v, out_addr = (as_i64(i) for i in (0, 1, 4, 5, 6))
        ids_ary = context.make_array(argtys[2])(context, builder, args[2])
        ids_ptr = ids_ary.data
        n_ids = builder.extract_value(ids_ary.shape, 0)
        w_ptr = context.make_array(argtys[3])(context, builder, args[3]).data
        ahead = ir.Constant(i64, BAG_PREFETCH_ROWS)
        pf_ty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        pf_fn = cgutils.get_or_insert_function(builder.module, pf_ty, "llvm.prefetch.p0i8")

        def id_at(index: Any) -> Any:
            value = builder.load(builder.gep(ids_ptr, [index]))
            return builder.sext(value, i64) if value.type.width < 64 else value

        def lanes(address: Any, j: int) -> Any:
            offset = builder.add(address, ir.Constant(i64, 4 * width * j))
            return builder.inttoptr(offset, vec.as_pointer())

        entry = builder.block
        head = builder.append_basic_block("rows.head")
        body = builder.append_basic_block("rows.body")
        fetch = builder.append_basic_block("rows.prefetch")
        add = builder.append_basic_block("rows.add")
        done = builder.append_basic_block("rows.done")
        builder.branch(head)

        builder.position_at_end(head)
        k = builder.phi(i64)
        k.add_incoming(start_v, entry)
        accs = []
        for _ in range(n_vec):
            acc = builder.phi(vec)
            acc.add_incoming(zeros, entry)
            accs.append(acc)
        builder.cbranch(builder.icmp_signed("<", k, end_v), body, done)

        builder.position_at_end(body)
        k_ahead = builder.add(k, ahead)
        builder.cbranch(builder.icmp_signed("<", k_ahead, n_ids), fetch, add)

        builder.position_at_end(fetch)
        target = builder.add(table_addr, builder.mul(id_at(k_ahead), row_size))
        hints = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        # Every cache line of the 32 * nvec bytes read, wherever the row starts: a line every
        # 64 bytes from the first byte, and the last byte's line (the same line again when the
        # row starts on a line boundary).
        span = 32 * nvec.literal_value
        for offset in [*range(0, span, 64), span - 1]:
            line = builder.add(target, ir.Constant(i64, offset))
            builder.call(pf_fn, [builder.inttoptr(line, byte_ptr), *hints])
        builder.branch(add)

        builder.position_at_end(add)
        row_addr = builder.add(table_addr, builder.mul(id_at(k), row_size))
        splat = None
        if use_weights:
            w = builder.load(builder.gep(builder.bitcast(w_ptr, f32.as_pointer()), [k]))
            splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vec, ir.Undefined), w, ir.Constant(i32, 0)),
                ir.Constant(vec, ir.Undefined),
                broadcast,
            )
        sums = []
        for j, acc in enumerate(accs):
            row = builder.load(lanes(row_addr, j), align=4)
            sums.append(builder.fadd(acc, row if splat is None else builder.fmul(row, splat)))
        k.add_incoming(builder.add(k, ir.Constant(i64, 1)), add)
        for acc, total in zip(accs, sums, strict=True):
            acc.add_incoming(total, add)
        builder.branch(head)

        builder.position_at_end(done)
        divisor = context.cast(builder, args[9], argtys[9], types.float32)
        lane0 = ir.Constant(i32, 0)
        divisors = builder.shuffle_vector(
            builder.insert_element(ir.Constant(vec, ir.Undefined), divisor, lane0),
            ir.Constant(vec, ir.Undefined),
            broadcast,
        )
        divide = builder.append_basic_block("rows.divide")
        store = builder.append_basic_block("rows.store")
        builder.cbranch(builder.fcmp_ordered("==", divisor, ir.Constant(f32, 1.0)), store, divide)
        builder.position_at_end(divide)
        quotients = [builder.fdiv(acc, divisors) for acc in accs]
        builder.branch(store)

        builder.position_at_end(store)
        values = []
        for acc, quotient in zip(accs, quotients, strict=True):
            value = builder.phi(vec)
            value.add_incoming(acc, done)
            value.add_incoming(quotient, divide)
            values.append(value)
        for j, value in enumerate(values):
            builder.store(value, lanes(out_addr, j), align=4)
        # One test for the whole block: x - x is 0 for finite x and NaN for inf / NaN, and NaN
        # survives addition. The stored values are summed first (a tree, for parallelism), so a
        # sum that overflows while every value is finite is a false alarm, which the caller's
        # exact check (pooled_overflow) clears; a test per vector cost twice as many
        # instructions (4 ns per bag of 64 floats, cache-resident table).
        level = list(values)
        while len(level) > 1:
            pairs = [builder.fadd(a, b) for a, b in zip(level[::2], level[1::2], strict=False)]
            level = pairs + ([level[-1]] if len(level) % 2 else [])
        probe = builder.fsub(level[0], level[0])
        bad = builder.fcmp_unordered("!=", probe, zeros)
        mask = builder.bitcast(bad, ir.IntType(width))
        return builder.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(width), 0))

    return sig, codegen
