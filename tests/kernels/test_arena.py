"""OutputArena: reuse only when no result refers to the buffer; bounded retention; threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embserve.kernels.arena import REUSE, OutputArena


def _addr(a: np.ndarray) -> int:
    """Where the data lives (holding ``a.base`` itself would keep the buffer busy)."""
    return int(a.ctypes.data)


@pytest.mark.skipif(not REUSE, reason="reuse is off on this interpreter (see arena.REUSE)")
def test_free_buffer_is_reused_and_kept_results_are_not_overwritten() -> None:
    arena = OutputArena()
    first = arena.take((100,), np.float32)
    first[:] = 1.0
    base = _addr(first)
    del first
    again = arena.take((80,), np.float32)
    assert _addr(again) == base  # nobody held the buffer: same memory
    again[:] = 2.0
    kept = again.reshape(8, 10)[2:]  # a view of a view still refers to the buffer
    del again
    other = arena.take((80,), np.float32)
    assert _addr(other) != base
    other[:] = 3.0
    assert (kept == 2.0).all()


@pytest.mark.skipif(not REUSE, reason="reuse is off on this interpreter")
def test_larger_request_gets_new_memory_and_small_ones_reuse_it() -> None:
    arena = OutputArena(keep=1)
    arena.take((10,), np.float32)
    big = arena.take((1000,), np.float32)
    base = _addr(big)
    del big
    assert _addr(arena.take((999,), np.float32)) == base
    assert arena.take((5,), np.float64).dtype == np.float64


def test_buffers_over_the_limit_are_never_retained() -> None:
    arena = OutputArena(max_bytes=1024)
    arena.take((1000,), np.float32)
    assert len(arena._pool) == 0
    arena.take((256,), np.float32)
    assert len(arena._pool) == 1
    arena.clear()
    assert len(arena._pool) == 0


def test_concurrent_takers_never_share_a_buffer() -> None:
    """Six threads each take a buffer, fill it, and only after all have filled (a barrier) check
    it, still holding it: a buffer handed to two of them shows the other's value. Without the
    barrier, fill and compare ran back to back and a shared buffer went unnoticed."""
    arena = OutputArena(keep=2)
    n = 6
    filled = threading.Barrier(n)
    checked = threading.Barrier(n)
    errors: list[str] = []

    def work(value: float) -> None:
        for i in range(200):
            out = arena.take((256,), np.float32)
            out.fill(value)
            filled.wait()
            if not (out == value).all():
                errors.append(f"thread {value}, round {i}: buffer shared")
            checked.wait()
            del out

    threads = [threading.Thread(target=work, args=(float(i),)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


@pytest.mark.skipif(not REUSE, reason="reuse is off on this interpreter")
def test_exact_shape_returns_the_buffer_and_a_smaller_one_a_view_of_it() -> None:
    arena = OutputArena()
    out = arena.take((4, 3, 2), np.float32)
    assert out.shape == (4, 3, 2)
    address = _addr(out)
    del out
    same = arena.take((4, 3, 2), np.float32)
    assert _addr(same) == address
    del same
    smaller = arena.take((5, 2), np.float32)
    assert smaller.shape == (5, 2)
    assert smaller.flags.c_contiguous
    assert _addr(smaller) == address


def test_a_small_request_does_not_pin_a_much_larger_buffer() -> None:
    arena = OutputArena()
    big = arena.take((4000,), np.float32)
    address = _addr(big)
    del big
    small = arena.take((10,), np.float32)
    assert _addr(small) != address
    assert small.base is None or small.base.size < 4000


def test_without_exact_refcounts_every_take_allocates(monkeypatch: pytest.MonkeyPatch) -> None:
    from embserve.kernels import arena as arena_module

    monkeypatch.setattr(arena_module, "REUSE", False)
    arena = OutputArena()
    first = arena.take((64,), np.float32)
    address = _addr(first)
    keep = first  # hold it so malloc cannot hand the same address back
    del first
    assert _addr(arena.take((64,), np.float32)) != address
    assert len(arena._pool) == 0
    del keep


def test_at_most_keep_buffers_are_retained() -> None:
    arena = OutputArena(keep=2)
    held = [arena.take((n,), np.float32) for n in (10, 100, 1000, 10000)]  # all busy
    assert len(arena._pool) == 2
    del held
    for n in (7, 70, 700, 7000, 70000):
        arena.take((n,), np.float32)
        assert len(arena._pool) <= 2


@pytest.mark.skipif(not REUSE, reason="reuse is off on this interpreter")
def test_a_free_buffer_of_another_dtype_is_not_handed_out() -> None:
    arena = OutputArena(keep=1)
    arena.take((10,), np.float32)  # dropped: free
    out = arena.take((10,), np.float64)
    assert out.dtype == np.float64
    assert out.nbytes == 80
