"""Concurrent lookups: 8 threads x 200 mixed calls at once, each equal to its serial result.

numba's fallback ``workqueue`` threading layer aborts the process when parallel kernels are
entered from several threads; embserve picks a thread-safe layer (or runs serial kernels), and
this test is what keeps that choice honest. Batches are sized so that both the serial and the
parallel kernel variants run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import embserve as es
from embserve import lookup
from embserve.kernels import _jit

N_THREADS = 8
CALLS_PER_THREAD = 200


def _model() -> tuple[es.TPUEmbeddingForServing, dict[str, Any]]:
    big = es.TableConfig(5000, 32, combiner="mean", name="big")
    small = es.TableConfig(100, 8, combiner="sqrtn", name="small")
    fc = {
        "dense": es.FeatureConfig(big),
        "bag": es.FeatureConfig(big),
        "seq": es.FeatureConfig(small, max_sequence_length=5),
        "sp": es.FeatureConfig(small),
    }
    return es.TPUEmbeddingForServing(fc, optimizer=None), fc


def _requests(n: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        batch = int(rng.choice([1, 7, 600, 2000]))  # small → serial, large → parallel kernels
        lengths = rng.integers(0, 6, size=batch)
        n_ids = int(lengths.sum())
        bag = es.RaggedTensor.from_row_lengths(rng.integers(0, 5000, size=n_ids), lengths)
        seq = es.RaggedTensor.from_row_lengths(rng.integers(0, 100, size=n_ids), lengths)
        rows = np.repeat(np.arange(batch), lengths)
        cols = np.concatenate([np.arange(k) for k in lengths]) if n_ids else np.zeros(0, int)
        sp = es.SparseTensor(
            np.stack([rows, cols], axis=1), rng.integers(0, 100, size=n_ids), [batch, 6]
        )
        features = {
            "dense": rng.integers(0, 5000, size=(batch,)),
            "bag": bag,
            "seq": seq,
            "sp": sp,
        }
        weights = None
        if i % 2:
            w = rng.uniform(0.1, 2.0, size=n_ids).astype(np.float32)
            weights = {
                "dense": None,
                "bag": es.RaggedTensor.from_row_splits(w, bag.row_splits),
                "seq": None,
                "sp": es.SparseTensor(sp.indices, w, sp.dense_shape),
            }
        reqs.append((features, weights))
    return reqs


def test_concurrent_lookups_equal_serial() -> None:
    model, _ = _model()
    model.build()
    rng = np.random.default_rng(1)
    for table in model.embedding_tables.values():
        table[...] = rng.standard_normal(table.shape)
    reqs = _requests(40, seed=2)
    expected = [model(f, w) for f, w in reqs]
    assert any(lookup._parallel(f["dense"].shape[0] * 32) for f, _ in reqs), (
        "no request is large enough to use the parallel kernels"
    )

    def worker(t: int) -> list[int]:
        mismatches = []
        for c in range(CALLS_PER_THREAD):
            k = (t * 7 + c * 3) % len(reqs)
            got = model(*reqs[k])
            for name, value in expected[k].items():
                if not np.array_equal(got[name], value):
                    mismatches.append(k)
        return mismatches

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(worker, range(N_THREADS)))
    assert all(not m for m in results), f"results differ under concurrency: {results}"


def test_threading_layer_is_thread_safe() -> None:
    assert _jit.THREADING_LAYER in ("omp", "tbb", None)
    if _jit.THREADING_LAYER is None:
        assert not _jit.PARALLEL


def test_concurrent_fused_dense_lookups_equal_serial() -> None:
    """The all-dense fast path (one kernel call, outputs from a shared arena) under 8 threads:
    each thread checks its result and then drops it, so arena buffers are recycled while other
    threads are mid-call."""
    tables = [es.TableConfig(3000, 16, name=f"t{i}") for i in range(6)]
    model = es.TPUEmbeddingForServing(
        {f"f{i}": es.FeatureConfig(t) for i, t in enumerate(tables)}, optimizer=None
    )
    model.build()
    rng = np.random.default_rng(3)
    for table in model.embedding_tables.values():
        table[...] = rng.standard_normal(table.shape)
    reqs = [
        {f"f{i}": rng.integers(0, 3000, size=int(rng.choice([1, 9, 800]))) for i in range(6)}
        for _ in range(12)
    ]
    for r in reqs:  # one batch size per request (the fast path needs equal shapes)
        n = r["f0"].shape[0]
        for k in r:
            r[k] = r[k][:n] if r[k].shape[0] >= n else rng.integers(0, 3000, size=n)
    by_table = dict(zip([f"f{i}" for i in range(6)], model.embedding_tables.values(), strict=True))
    expected = [{k: by_table[k][v] for k, v in r.items()} for r in reqs]

    def worker(t: int) -> int:
        bad = 0
        for c in range(CALLS_PER_THREAD):
            k = (t * 5 + c) % len(reqs)
            got = model(reqs[k])
            bad += sum(not np.array_equal(got[n], v) for n, v in expected[k].items())
            del got
        return bad

    with ThreadPoolExecutor(N_THREADS) as pool:
        assert sum(pool.map(worker, range(N_THREADS))) == 0
