"""How long a fresh process takes to be ready: import embserve and run one lookup per path.

Runs the same child script twice against an empty numba cache directory: the first run
compiles the kernels (cold), the second loads them from the on-disk cache (warm, what every
later process sees). Usage: ``.venv/bin/python benchmarks/cold_start.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import embserve as es
t1 = time.perf_counter()
tc = es.TableConfig(1000, 16, combiner="mean")
fc = {
    "d": es.FeatureConfig(tc),
    "r": es.FeatureConfig(tc),
    "s": es.FeatureConfig(tc),
    "q": es.FeatureConfig(tc, max_sequence_length=3),
    "p": es.FeatureConfig(tc, validate_weights_and_indices=False),
}
emb = es.TPUEmbeddingForServing(fc, None)
sp = es.SparseTensor([[0, 0], [1, 0]], [1, 2], [2, 2])
spw = es.SparseTensor([[0, 0], [1, 0]], np.array([1.0, 2.0], np.float32), [2, 2])
for dt in (np.int32, np.int64):
    r = es.RaggedTensor.from_row_splits(np.array([1, 2, 3], dt), [0, 2, 3])
    rw = es.RaggedTensor.from_row_splits(np.array([1.0, 2.0, 3.0], np.float32), [0, 2, 3])
    emb(
        {"d": np.array([1, 2], dt), "r": r, "s": sp, "q": r, "p": sp},
        {"d": None, "r": rw, "s": spw, "q": None, "p": spw},
    )
print(f"{t1 - t0:.2f} {time.perf_counter() - t0:.2f}")
"""


def main() -> int:
    """Print a markdown table of import and ready times, cold and warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, EMBSERVE_CACHE_DIR=cache)
        print("| run | import s | ready s (import + one lookup per path, int32 and int64) |")
        print("| --- | ---: | ---: |")
        for label in ("cold (empty kernel cache)", "warm (cache from the cold run)"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
            ).stdout.split()
            print(f"| {label} | {out[0]} | {out[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
