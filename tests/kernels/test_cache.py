"""The on-disk kernel cache (issue 10, item 14): keyed on every kernel source, so an edit to a
helper inlined from another file reaches its callers, and safe when several processes start at
once on one empty cache directory (``embserve serve --workers N``).

Each test runs fresh Python processes on a copy of the package and its own cache directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import embserve

PACKAGE = Path(embserve.__file__).resolve().parent

# Gathers rows 1 and 2 of a 4 x 3 table through the fused multi-table kernel, which compiles
# sequence._gather_range (another file) into itself; prints the result and the cache hits.
GATHER = """
import numpy as np
from embserve.kernels.multi import gather_tables_serial
table = np.arange(12, dtype=np.float32).reshape(4, 3)
out = np.zeros((1, 2, 3), np.float32)
layout = np.array([[4, 4, 3, 1, 0, 4, 0, 0]])
gather_tables_serial(np.array([table.ctypes.data]), layout, np.array([1, 2]), out)
print(out.ravel().tolist(), sum(gather_tables_serial.stats.cache_hits.values()))
"""


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "embserve", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _env(site: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EMBSERVE_"))}
    env.update(PYTHONPATH=str(site), EMBSERVE_CACHE_DIR=str(cache))
    return env


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_an_edit_to_an_inlined_helper_reaches_callers_in_other_files(tmp_path: Path) -> None:
    site = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    env = _env(site, cache)
    rows = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert _python(GATHER, env) == f"{rows} 0"  # compiled and written
    assert _python(GATHER, env) == f"{rows} 1"  # loaded from the cache: the cache is used
    (before,) = list(cache.iterdir())

    helper = site / "embserve" / "kernels" / "sequence.py"
    source = helper.read_text()
    assert source.count("o[d] = row[d]\n") == 2  # _gather_range and _sequence_row
    helper.write_text(source.replace("o[d] = row[d]\n", "o[d] = row[d] + 100\n", 1))

    assert _python(GATHER, env) == f"{[r + 100 for r in rows]} 0"  # recompiled, not stale
    assert sorted(cache.iterdir()) == sorted([before, *(set(cache.iterdir()) - {before})])
    assert len(list(cache.iterdir())) == 2  # one directory per source hash; the old one left


# Runs every kernel entry point (serial and parallel, both id dtypes, float32 and float64 tables,
# dims taking the register and the array paths) in an order that depends on the process, so
# that processes compile different signatures at the same moment; prints a digest of every
# output.
EVERY_KERNEL = """
import hashlib, os, random
import numpy as np
from embserve.kernels import check, multi, pooled, sequence

rng = np.random.default_rng(0)
jobs = {}  # name -> a call returning bytes
groups = []


def add(name, kernel, args, shape=None, dtype=None):
    def run():
        if shape is None:
            return repr(kernel(*args)).encode()
        out = np.zeros(shape, dtype)
        value = kernel(*args, out)
        return out.tobytes() + repr(value).encode()

    jobs[name] = run


for it in (np.int32, np.int64):
    for dt, dim in ((np.float32, 16), (np.float32, 5), (np.float64, 16)):
        table = rng.standard_normal((50, dim)).astype(dt)
        ids = rng.integers(0, 50, 40).astype(it)
        splits = np.array([0, 3, 3, 17, 40], np.int64)
        weights = rng.uniform(0.5, 2, 40).astype(np.float32)
        cols = (np.arange(40) % 3).astype(np.int64)
        key = (np.dtype(it).name, np.dtype(dt).name, dim)
        for k in (pooled.pooled_serial, pooled.pooled_parallel):
            for w in (np.empty(0, np.float32), weights):
                for c in (pooled.SUM, pooled.MEAN, pooled.SQRTN):
                    add((k.__name__, key, len(w), c), k, (table, ids, w, splits, c), (4, dim), dt)
        out = np.full((4, dim), np.inf, dt)
        add(("overflow", key), pooled.pooled_overflow, (table, ids, weights, splits, 1, out, 0))
        for k in (sequence.gather_serial, sequence.gather_parallel):
            add((k.__name__, key), k, (table, ids), (40, dim), dt)
        for k in (sequence.sequence_serial, sequence.sequence_parallel):
            add((k.__name__, key), k, (table, ids, splits), (4, 6, dim), dt)
        for k in (sequence.scatter_add_serial, sequence.scatter_add_parallel):
            add((k.__name__, key), k, (table, ids, cols, splits), (4, 3, dim), dt)
    add(("first_bad_id", it.__name__), check.first_bad_id, (ids, 30, False))
    group = multi.TableGroup([rng.standard_normal((50, 8)).astype(np.float32) for _ in range(3)])
    groups.append(group)  # the kernels read the tables by address: keep them alive
    stacked = rng.integers(0, 50, 30).astype(it)
    for k in (multi.gather_tables_serial, multi.gather_tables_parallel):
        args = (group.addresses, group.layout, stacked)
        add((k.__name__, it.__name__), k, args, (3, 10, 8), np.float32)
add("first_nonfinite", check.first_nonfinite, (np.array([1.0, np.inf], np.float32),))
add("first_bad_split", check.first_bad_split, (np.array([0, 2, 1], np.int64), 1))
order = sorted(jobs, key=repr)
random.Random(int(os.environ["SEED"])).shuffle(order)
results = {name: jobs[name]() for name in order}
digest = hashlib.sha256()
for name in sorted(results, key=repr):
    digest.update(repr(name).encode() + results[name])
print(len(results), digest.hexdigest())
"""


@pytest.mark.slow
def test_workers_starting_at_once_on_an_empty_cache_agree(tmp_path: Path) -> None:
    site = _copy_package(tmp_path)
    env = _env(site, tmp_path / "cache")
    n = 3
    with ThreadPoolExecutor(n) as pool:
        runs = [pool.submit(_python, EVERY_KERNEL, env | {"SEED": str(i)}) for i in range(n)]
        digests = [run.result() for run in runs]
    assert len(set(digests)) == 1, digests
    # A process started afterwards loads everything from the cache and agrees too.
    assert _python(EVERY_KERNEL, env | {"SEED": "99"}) == digests[0]


# first_bad_id for int32 ids and for int64 ids: two entries of one function in the cache.
BAD_ID = """
import numpy as np
from embserve.kernels import _jit
from embserve.kernels.check import first_bad_id
first_bad_id(np.array([0, 0, 7], np.int32), 5, False)
print(first_bad_id(np.array([0, 0, 7], np.int64), 5, False),
      sum(first_bad_id.stats.cache_hits.values()), _jit.CACHE_DIR)
"""


def _cache_dir(cache: Path) -> Path:
    (directory,) = [p for p in cache.iterdir() if p.is_dir()]
    return directory


def test_an_entry_holding_another_signature_is_compiled_again(tmp_path: Path) -> None:
    """Two processes writing different signatures of one kernel at once can leave the index
    pointing at the other's data file; loading it would run int32 code on int64 ids."""
    site = _copy_package(tmp_path)
    env = _env(site, tmp_path / "cache")
    assert _python(BAD_ID, env).split()[:2] == ["2", "0"]
    assert _python(BAD_ID, env).split()[:2] == ["2", "2"]  # both signatures load
    data = sorted(_cache_dir(tmp_path / "cache").glob("check.first_bad_id-*.nbc"))
    assert len(data) == 2
    swapped = tmp_path / "swap"
    data[0].rename(swapped)
    data[1].rename(data[0])
    swapped.rename(data[1])
    assert _python(BAD_ID, env).split()[:2] == ["2", "0"]  # neither loaded: both compiled


def test_a_damaged_cache_file_is_compiled_again(tmp_path: Path) -> None:
    site = _copy_package(tmp_path)
    env = _env(site, tmp_path / "cache")
    _python(BAD_ID, env)
    (index,) = _cache_dir(tmp_path / "cache").glob("check.first_bad_id-*.nbi")
    index.write_bytes(index.read_bytes()[:20])
    assert _python(BAD_ID, env).split()[:2] == ["2", "0"]
    assert _python(BAD_ID, env).split()[:2] == ["2", "2"]  # repaired: loaded again


def test_a_cache_that_cannot_be_written_never_fails_a_lookup(tmp_path: Path) -> None:
    site = _copy_package(tmp_path)
    env = _env(site, tmp_path / "cache")
    _python("import embserve.kernels._jit", env)  # creates the directory
    (_cache_dir(tmp_path / "cache") / ".lock").mkdir()  # opening the lock file now fails
    assert _python(BAD_ID, env).split()[:2] == ["2", "0"]
    assert not list(_cache_dir(tmp_path / "cache").glob("*.nbi"))


def test_writers_take_the_cache_lock(tmp_path: Path) -> None:
    """Index updates are read-modify-write: a writer waits for the lock (held here)."""
    import fcntl
    import time

    site = _copy_package(tmp_path)
    env = _env(site, tmp_path / "cache")
    _python("import embserve.kernels._jit", env)
    directory = _cache_dir(tmp_path / "cache")
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        writer = subprocess.Popen(
            [sys.executable, "-c", BAD_ID], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and writer.poll() is None:
                time.sleep(0.5)
                if time.monotonic() > deadline - 55:  # 5 s: compiled long ago, now waiting
                    break
            assert writer.poll() is None, "the writer did not wait for the lock"
            assert not list(directory.glob("*.nbi"))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0
    assert out.split()[:2] == ["2", "0"]
    assert list(directory.glob("check.first_bad_id-*.nbi"))


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"EMBSERVE_CACHE_DIR": "a", "NUMBA_CACHE_DIR": "b", "XDG_CACHE_HOME": "c"}, "a"),
        ({"NUMBA_CACHE_DIR": "b", "XDG_CACHE_HOME": "c"}, "b"),
        ({"XDG_CACHE_HOME": "c"}, "c/embserve/numba"),
        ({"EMBSERVE_CACHE_DIR": "file"}, "tmp/embserve-numba-*"),  # not a directory
    ],
)
def test_where_the_cache_lives(tmp_path: Path, variables: dict[str, str], expected: str) -> None:
    site = _copy_package(tmp_path)
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in _env(site, tmp_path).items() if k != "EMBSERVE_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path / "tmp")
    env.update({k: str(tmp_path / v) for k, v in variables.items()})
    result, _, where = _python(BAD_ID, env).split()
    assert result == "2"
    found = Path(where)
    assert found.parent.match(str(tmp_path / expected))
    assert found.name.startswith("embserve-")
    assert list(found.glob("check.first_bad_id-*.nbi"))


def test_without_any_writable_directory_kernels_compile_in_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np
    from numba.core.caching import NullCache

    from embserve.kernels import _jit

    monkeypatch.setattr(_jit, "_writable", lambda directory: False)
    assert _jit._pick_cache_dir() is None
    assert "compiled in every process" in caplog.text
    monkeypatch.setattr(_jit, "CACHE_DIR", None)

    def add_one(a):  # type: ignore[no-untyped-def]
        return a + 1

    kernel = _jit.jit(add_one)
    assert isinstance(kernel._cache, NullCache)
    assert kernel(np.int64(1)) == 2
