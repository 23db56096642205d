"""Numba policy, in one place: jit options, on-disk cache, threading layer.

* ``fastmath`` is off: results stay as close to TensorFlow's float32 arithmetic as plain
  IEEE operations allow (no reassociation, no fused multiply-add contraction).
* ``cache=True``: compiled kernels are written to disk, so a fresh process loads them instead of
  compiling (a cold compile of all kernels takes several seconds; a warm load well under 2 s).
  ``EMBSERVE_CACHE_DIR`` moves the cache (numba's own ``NUMBA_CACHE_DIR`` works too); by default
  numba stores it next to these sources or, when that is read-only, under the user's cache dir.
* Kernels are compiled lazily per argument type. The wrappers only ever pass int32 / int64 ids,
  float32 (or float64, via ``serving_embedding_lookup``) tables, C-contiguous arrays, so the set of
  compiled specialisations stays small.
* Threading layer: numba's fallback ``workqueue`` layer aborts the whole process when parallel
  kernels are entered from several Python threads at once — which is what a threaded server does.
  We require a thread-safe layer (``omp`` via the system's GNU OpenMP, or ``tbb``). When neither
  can be loaded, :data:`PARALLEL` is false and every call uses the serial kernels: slower on big
  batches, never unsafe.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numba

__all__ = ["PARALLEL", "THREADING_LAYER", "jit", "jit_inline", "jit_parallel"]

F = TypeVar("F", bound=Callable[..., Any])

_cache_dir = os.environ.get("EMBSERVE_CACHE_DIR")
if _cache_dir:
    numba.config.CACHE_DIR = _cache_dir  # type: ignore[attr-defined]


# How long GNU OpenMP's idle pool threads spin before sleeping. libgomp's default spins for
# milliseconds after every parallel region (on a 2-core server that CPU is taken from the thread
# parsing the next request); OMP_WAIT_POLICY=PASSIVE sleeps at once, but then every parallel
# region pays a futex wake-up, measured at 105-120 us per region on these VMs, which was a third
# of a B=1024 bag lookup. 30,000 spins keep the threads awake for a few hundred microseconds
# (an empty region then costs 2-3 us when called again within 300 us, 46 us after 1 ms idle),
# which covers back-to-back lookups and bounds the CPU an idle pool burns. libgomp reads this
# once, when it loads (the probe below loads it), so it is set first; any OMP_WAIT_POLICY or
# GOMP_SPINCOUNT the user set wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")


def _pick_threading_layer() -> str | None:
    """The first thread-safe layer whose native module loads, or None."""
    for layer, module in (("omp", "numba.np.ufunc.omppool"), ("tbb", "numba.np.ufunc.tbbpool")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return layer
    return None


THREADING_LAYER: str | None = _pick_threading_layer()
PARALLEL: bool = THREADING_LAYER is not None and os.environ.get("EMBSERVE_SERIAL", "") in ("", "0")
if THREADING_LAYER is not None:
    numba.config.THREADING_LAYER = THREADING_LAYER  # type: ignore[attr-defined]

_OPTIONS: dict[str, Any] = {"cache": True, "fastmath": False, "nogil": True, "error_model": "numpy"}


def jit(fn: F) -> F:
    """Compile a serial kernel."""
    return numba.njit(**_OPTIONS)(fn)


def jit_parallel(fn: F) -> F:
    """Compile a kernel whose ``prange`` loops run on the thread pool."""
    return numba.njit(parallel=True, **_OPTIONS)(fn)


def jit_inline(fn: F) -> F:
    """Compile a kernel body that numba inlines into each caller (a serial and a parallel driver
    share one body). Called as an ordinary jitted function instead, a per-row body measured 2.4x
    slower: the call is not inlined and the inner loop is not vectorized.
    """
    return numba.njit(inline="always", **_OPTIONS)(fn)
