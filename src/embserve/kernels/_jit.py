"""Numba policy, in one place: jit options, the on-disk cache, the threading layer.

* ``fastmath`` is off: results stay as close to TensorFlow's float32 arithmetic as plain
  IEEE operations allow (no reassociation, no fused multiply-add contraction).
* Kernels are compiled lazily per argument type. The wrappers only ever pass int32 / int64 ids,
  float32 (or float64, via ``serving_embedding_lookup``) tables, C-contiguous arrays, so the set of
  compiled specialisations stays small.

**On-disk cache.** A fresh process loads compiled kernels from disk instead of compiling them (a
cold compile of all kernels takes several seconds; a warm load well under 2 s). numba keys its
own cache on the source of the decorated function's file only, but our kernels inline helpers
from other files (``multi.gather_tables_serial`` compiles ``sequence._gather_range`` into
itself): after an edit to the helper, numba kept serving the old code. So the cache lives in a
directory named by :data:`SOURCE_HASH`, a hash of every ``*.py`` file in this package plus the
numba, llvmlite and Python versions, and that hash is also each index's source stamp:

* ``$EMBSERVE_CACHE_DIR/embserve-<hash>``, else ``$NUMBA_CACHE_DIR/embserve-<hash>``, else
  ``$XDG_CACHE_HOME/embserve/numba/embserve-<hash>`` (``~/.cache/...``); when that cannot be
  written, ``<tempdir>/embserve-numba-<uid>/embserve-<hash>``; when nothing can, kernels are
  compiled in every process (a warning says so). numba's own ``NUMBA_CACHE_DIR`` handling of the
  user's functions is untouched.
* Directories of older sources or versions are left in place, not pruned: another process, or
  another installed version sharing the directory, may still be using them. Delete them (or the
  whole directory) at any time; the next process recompiles what it needs.
* Several processes starting at once on an empty cache (``embserve serve --workers N``) all
  compile and write: index updates are serialized with a file lock (numba's own read-modify-
  write of the index lets two writers of different signatures cross their data files), and a
  loaded entry whose signature is not the one asked for is discarded and recompiled.

**Threading layer.** numba's ``workqueue`` layer aborts the whole process when parallel kernels
are entered from several Python threads at once, which is what a threaded server does. What
embserve does at import:

* If the user chose a layer (``NUMBA_THREADING_LAYER``, or ``_numba_config.THREADING_LAYER`` set
  before importing embserve), it is kept. When it resolves to a thread-safe layer that can load
  (``omp``, ``tbb``, ``threadsafe``, ``safe``, or ``forksafe`` with TBB), parallel kernels run on
  it; otherwise (``workqueue``, ``forksafe`` without TBB, a layer that cannot load) every call
  uses the serial kernels and a warning says so.
* Otherwise embserve sets ``_numba_config.THREADING_LAYER`` to the first of ``omp`` (GNU OpenMP)
  and ``tbb`` that loads (``threadsafe`` when ``NUMBA_THREADING_LAYER_PRIORITY`` is set, so the
  user's order decides); when neither loads, nothing is set and the serial kernels run.
* If numba's pool was already launched, the layer it runs is what counts.
* ``EMBSERVE_SERIAL=1`` forces the serial kernels.

:data:`PARALLEL` says whether parallel kernels may run; :data:`THREADING_LAYER` is the
thread-safe layer they run on (``None`` when serial).

**OpenMP spin.** libgomp's idle pool threads spin for milliseconds after every parallel region (on
a 2-core server that CPU is taken from the thread parsing the next request); OMP_WAIT_POLICY=
PASSIVE sleeps at once, but then every parallel region pays a futex wake-up, measured at 105-120
us per region on these VMs, a third of a B=1024 bag lookup. GOMP_SPINCOUNT=30000 keeps the threads
awake for a few hundred microseconds (an empty region then costs 2-3 us when called again within
300 us, 46 us after 1 ms idle). libgomp reads it once, from the C environment, when it loads: so
embserve puts ``GOMP_SPINCOUNT=30000`` into the environment only while it loads numba's OpenMP
layer and restores the environment right after (child processes do not inherit it). It does
nothing when the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``, or chose a layer other than
OpenMP.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import llvmlite  # type: ignore[import-untyped]
import numba
from numba.core import sigutils
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

__all__ = [
    "CACHE_DIR",
    "PARALLEL",
    "SOURCE_HASH",
    "THREADING_LAYER",
    "jit",
    "jit_inline",
    "jit_parallel",
]

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("embserve")

# ---------------------------------------------------------------------------------------------
# The on-disk cache


def _source_hash() -> str:
    """Every kernel source file (this package, recursively) and the compiler versions."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    versions = (
        f"numba {numba.__version__} llvmlite {llvmlite.__version__} {sys.implementation.cache_tag}"
    )
    digest.update(versions.encode())
    for path in sorted(here.rglob("*.py")):
        digest.update(b"\0" + path.relative_to(here).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


SOURCE_HASH: str = _source_hash()


def _cache_root() -> Path:
    for variable in ("EMBSERVE_CACHE_DIR", "NUMBA_CACHE_DIR"):
        value = os.environ.get(variable)
        if value:
            return Path(value)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "embserve" / "numba"


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def _pick_cache_dir() -> Path | None:
    name = f"embserve-{SOURCE_HASH}"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for root in (_cache_root(), Path(tempfile.gettempdir()) / f"embserve-numba-{uid}"):
        if _writable(root / name):
            return root / name
    _log.warning(
        "no writable directory for the compiled-kernel cache (tried %s and the temporary "
        "directory): kernels are compiled in every process",
        _cache_root(),
    )
    return None


CACHE_DIR: Path | None = _pick_cache_dir()


class _Locator(_CacheLocator):
    """Every kernel's cache files in :data:`CACHE_DIR`, stamped with :data:`SOURCE_HASH`."""

    def __init__(self, py_func: Any) -> None:
        self._lineno = py_func.__code__.co_firstlineno

    def ensure_cache_path(self) -> None:
        assert CACHE_DIR is not None
        CACHE_DIR.mkdir(parents=True, exist_ok=True)

    def get_cache_path(self) -> str:
        return str(CACHE_DIR)

    def get_source_stamp(self) -> str:
        return SOURCE_HASH

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> _Locator:
        return cls(py_func)


class _Impl(CompileResultCacheImpl):
    """numba's implementation with our locator, whatever numba's locator settings say."""

    def __init__(self, py_func: Any) -> None:
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = _Locator(py_func)
        modname = os.path.splitext(os.path.basename(inspect.getfile(py_func)))[0]
        fullname = f"{modname}.{py_func.__qualname__}"
        self._filename_base = self.get_filename_base(fullname, getattr(sys, "abiflags", ""))


@contextlib.contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    """An advisory lock on ``directory`` across processes (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms we serve from
        yield
        return
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _KernelCache(FunctionCache):
    """numba's per-function cache, keyed on every kernel source, safe for concurrent writers.

    A cache that cannot be read or written never fails a lookup: the kernel is compiled (and
    kept in memory) instead.
    """

    _impl_class = _Impl

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        try:
            cres = super().load_overload(sig, target_context)
        except Exception as exc:  # a damaged or foreign file: numba would raise into the call
            _log.debug("compiled-kernel cache unreadable (%s): compiling", exc)
            return None
        if cres is not None:
            args, _ = sigutils.normalize_signature(sig)
            if tuple(cres.signature.args) != tuple(args):
                return None  # another writer's entry under our key: compile instead
        return cres

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            with _exclusive(self._cache_path):
                try:
                    super().save_overload(sig, data)
                except OSError:
                    raise
                except Exception:  # the index is damaged (numba reads it first): start it anew
                    os.unlink(self._cache_file._index_path)
                    super().save_overload(sig, data)
        except Exception as exc:
            _log.debug("compiled-kernel cache not written (%s)", exc)


def _cached(dispatcher: Any) -> Any:
    if CACHE_DIR is not None and hasattr(dispatcher, "py_func"):  # not under NUMBA_DISABLE_JIT
        dispatcher._cache = _KernelCache(dispatcher.py_func)
    return dispatcher


# ---------------------------------------------------------------------------------------------
# The threading layer


_numba_config: Any = numba.config  # settings are plain module attributes (untyped)

# How long GNU OpenMP's idle threads spin before sleeping (see the module docstring).
_SPIN_COUNT = "30000"


def _import_omp() -> bool:
    """Load numba's OpenMP layer (and libgomp) with the spin policy in the C environment."""
    spin = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if spin:
        os.environ["GOMP_SPINCOUNT"] = _SPIN_COUNT
    try:
        importlib.import_module("numba.np.ufunc.omppool")
    except ImportError:
        return False
    finally:
        if spin:
            os.environ.pop("GOMP_SPINCOUNT", None)
    return True


def _loads(layer: str) -> bool:
    if layer == "omp":
        return _import_omp()
    try:
        importlib.import_module("numba.np.ufunc.tbbpool")
    except ImportError:
        return False
    return True


def _gnu_openmp() -> bool:
    return getattr(sys.modules.get("numba.np.ufunc.omppool"), "openmp_vendor", "GNU") == "GNU"


def _safe_layer_for(requested: str) -> str | None:
    """The thread-safe layer numba will launch for ``requested``, or None (workqueue, or none
    can load). Mirrors numba's selection (numba/np/ufunc/parallel.py, _launch_threads)."""
    if requested in ("omp", "tbb"):
        return requested if _loads(requested) else None
    if requested == "safe":
        return "tbb" if _loads("tbb") else None
    if requested == "threadsafe":
        return next((layer for layer in ("tbb", "omp") if _loads(layer)), None)
    if requested == "forksafe":
        if _loads("tbb"):
            return "tbb"
        if sys.platform != "linux" and _loads("omp"):
            return "omp"
        return None
    if requested == "default":
        for layer in _numba_config.THREADING_LAYER_PRIORITY:
            if layer == "workqueue":
                return None
            if _loads(layer):
                return str(layer)
        return None
    return None  # workqueue, or a name numba will refuse


def _threading_layer() -> str | None:
    from numba.np.ufunc import parallel

    if parallel._is_initialized:  # the pool is running: its layer is what counts
        running = str(numba.threading_layer())
        return running if running in ("omp", "tbb") else None
    requested = str(_numba_config.THREADING_LAYER).lower()
    if requested != "default":  # the user's choice: kept
        return _safe_layer_for(requested)
    if "NUMBA_THREADING_LAYER_PRIORITY" in os.environ:
        layer = _safe_layer_for("threadsafe")
        if layer is not None:
            _numba_config.THREADING_LAYER = "threadsafe"
        return layer
    for name in ("omp", "tbb"):
        if _loads(name):
            _numba_config.THREADING_LAYER = name
            return name
    return None


THREADING_LAYER: str | None = _threading_layer()
PARALLEL: bool = THREADING_LAYER is not None and os.environ.get("EMBSERVE_SERIAL", "") in ("", "0")
if THREADING_LAYER is None:
    _log.log(
        logging.INFO
        if str(_numba_config.THREADING_LAYER).lower() == "default"
        else logging.WARNING,
        "numba threading layer %r is not thread-safe here or cannot load: embserve runs its "
        "kernels serially (NUMBA_THREADING_LAYER=omp or tbb gives parallel kernels)",
        str(_numba_config.THREADING_LAYER),
    )

# ---------------------------------------------------------------------------------------------
# Decorators

_OPTIONS: dict[str, Any] = {"fastmath": False, "nogil": True, "error_model": "numpy"}


def jit(fn: F) -> F:
    """Compile a serial kernel."""
    return _cached(numba.njit(**_OPTIONS)(fn))


def jit_parallel(fn: F) -> F:
    """Compile a kernel whose ``prange`` loops run on the thread pool."""
    return _cached(numba.njit(parallel=True, **_OPTIONS)(fn))


def jit_inline(fn: F) -> F:
    """Compile a kernel body that numba inlines into each caller (a serial and a parallel driver
    share one body). Called as an ordinary jitted function instead, a per-row body measured 2.4x
    slower: the call is not inlined and the inner loop is not vectorized.
    """
    return _cached(numba.njit(inline="always", **_OPTIONS)(fn))
