"""Process-wide settings at import (issue 10, item 15): the user's threading layer and environment
are kept; embserve's OpenMP spin policy reaches libgomp without staying in ``os.environ``; an
unsafe layer means serial kernels, never a crash from concurrent parallel calls.

Every case runs in a fresh interpreter with the environment under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CLEAN = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "EMBSERVE_SERIAL")


def _run(code: str, **overrides: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k not in CLEAN}
    env.update(overrides)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


# Records the C environment's GOMP_SPINCOUNT at the moment numba's OpenMP layer (and with it
# libgomp, which reads it once) is imported, then reports what importing embserve left behind.
PROBE = """
import ctypes, importlib.abc, json, os, sys
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
seen = {}

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numba.np.ufunc.omppool":
            value = libc.getenv(b"GOMP_SPINCOUNT")
            seen["spin_at_load"] = None if value is None else value.decode()
        return None

sys.meta_path.insert(0, Spy())
import numba
before_env = dict(os.environ)
before_layer = numba.config.THREADING_LAYER
import embserve
from embserve.kernels import _jit
print(json.dumps({
    "env_unchanged": dict(os.environ) == before_env,
    "c_env_spin": (lambda v: None if v is None else v.decode())(libc.getenv(b"GOMP_SPINCOUNT")),
    "layer_before": before_layer,
    "layer_after": numba.config.THREADING_LAYER,
    "embserve_layer": _jit.THREADING_LAYER,
    "parallel": _jit.PARALLEL,
    **seen,
}))
"""


def test_default_spin_policy_reaches_libgomp_and_leaves_the_environment_as_it_was() -> None:
    got = _run(PROBE)
    assert got["spin_at_load"] == "30000"
    assert got["env_unchanged"] is True
    assert got["c_env_spin"] is None  # children spawned later do not inherit it
    assert got["layer_before"] == "default"
    assert got["layer_after"] == got["embserve_layer"] == "omp"
    assert got["parallel"] is True


@pytest.mark.parametrize(
    ("overrides", "spin"),
    [({"OMP_WAIT_POLICY": "PASSIVE"}, None), ({"GOMP_SPINCOUNT": "5"}, "5")],
)
def test_a_spin_policy_the_user_set_is_kept(overrides: dict[str, str], spin: str | None) -> None:
    got = _run(PROBE, **overrides)
    assert got["spin_at_load"] == spin
    assert got["env_unchanged"] is True


@pytest.mark.parametrize(
    ("layer", "safe"),
    [("omp", "omp"), ("threadsafe", "omp"), ("workqueue", None), ("safe", None), ("tbb", None)],
)
def test_a_threading_layer_the_user_chose_is_kept(layer: str, safe: str | None) -> None:
    """tbb is not installed here, so ``safe`` and ``tbb`` cannot load: serial, like workqueue."""
    got = _run(PROBE, NUMBA_THREADING_LAYER=layer)
    assert got["layer_before"] == got["layer_after"] == layer
    assert got["embserve_layer"] == safe
    assert got["parallel"] is (safe is not None)
    assert got["env_unchanged"] is True
    if safe is None:
        assert "kernels serially" in str(got["stderr"])
    if layer != "omp" and layer != "threadsafe":
        assert "spin_at_load" not in got  # OpenMP (libgomp) is not even loaded


def test_a_layer_set_in_code_before_import_is_kept() -> None:
    got = _run("import numba; numba.config.THREADING_LAYER = 'workqueue'\n" + PROBE)
    assert got["layer_after"] == "workqueue"
    assert got["parallel"] is False


# Parallel-sized lookups from 8 threads at once: with the workqueue layer numba aborts the
# process ("Terminating: Nested parallel kernel launch detected") unless embserve stays serial.
THREADED = """
import json
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import embserve as es
from embserve import lookup
table = es.TableConfig(5000, 32, combiner="mean", name="t")
emb = es.TPUEmbeddingForServing({"f": es.FeatureConfig(table), "g": es.FeatureConfig(table)}, None)
ids = np.arange(4000) % 5000
bags = es.RaggedTensor.from_row_lengths(np.arange(8000) % 5000, [2] * 4000)
want = emb({"f": ids, "g": bags})
assert 4000 * 32 >= lookup.PARALLEL_MIN_FLOATS  # parallel-sized, were parallel kernels allowed
def work(_):
    for _ in range(20):
        got = emb({"f": ids, "g": bags})
        assert all(np.array_equal(got[k], want[k]) for k in want)
    return True
with ThreadPoolExecutor(8) as pool:
    ok = all(pool.map(work, range(8)))
import numba
print(json.dumps({"ok": ok, "layer": numba.threading_layer() if lookup._jit.PARALLEL else None}))
"""


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_parallel_sized_lookups_from_threads_survive_the_users_layer(layer: str) -> None:
    got = _run(THREADED, NUMBA_THREADING_LAYER=layer)
    assert got["ok"] is True
    assert got["layer"] == (None if layer == "workqueue" else "omp")


def test_serial_can_be_forced() -> None:
    got = _run(PROBE, EMBSERVE_SERIAL="1")
    assert got["parallel"] is False
    assert got["embserve_layer"] == "omp"
