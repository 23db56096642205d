"""embserve against real TensorFlow 2.21 on seeded random lookups (skipped without TensorFlow).

Where ``tests/test_tf_fixtures.py`` replays recorded cases, this module asks TensorFlow itself,
so it can explore many more combinations: input kind (dense / sparse / ragged, mixed in one
call) × combiner × weights × ``max_sequence_length`` × ``output_shape`` × ``validate`` × sparse
rank, through ``TPUEmbeddingForServing`` and ``serving_embedding_lookup``, with a few injected
out-of-range ids. Every case runs twice on the embserve side:

* ``tf_objects``: the very ``tf.Tensor`` / ``tf.SparseTensor`` / ``tf.RaggedTensor`` objects given
  to TensorFlow are passed straight to embserve, which must accept them by duck typing;
* ``native``: numpy arrays, ``es.SparseTensor`` and ``es.RaggedTensor``.

Only valid inputs are generated apart from the injected bad ids, and weights are finite (NaN /
inf weights are a deliberate difference, see ``test_tf_fixtures.py``).

Run it in the TensorFlow venv (``pip install -e . --no-deps`` plus numba and pytest there)::

    .venvs/tf/bin/python -m pytest tests/test_oracle_tf.py
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import embserve as es

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TensorFlow's own import-time deprecation warnings
    tf = pytest.importorskip("tensorflow")

TFE = tf.tpu.experimental.embedding
COMBINERS = ("sum", "mean", "sqrtn")
N_CASES = 48
# TF and embserve may sum a bag in a different order; float32 values below ~10.
RTOL = 1e-5
ATOL = 1e-5
_BAD_ID = re.compile(r"indices\[[\d,]+\] = (-?\d+) is not in \[0, (\d+)\)")


@dataclass
class Feature:
    """One random feature: its options, raw ids and (optional) raw weights."""

    kind: str
    table: int
    max_sequence_length: int = 0
    validate: bool = True
    output_shape: list[int] | None = None
    dense: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    dense_shape: list[int] = field(default_factory=list)
    row_splits: np.ndarray | None = None
    weights: np.ndarray | None = None

    def id_array(self) -> np.ndarray:
        """The array holding this feature's ids (for bad-id injection)."""
        arr = self.dense if self.kind == "dense" else self.values
        assert arr is not None
        return arr


@dataclass
class Case:
    """A random lookup: tables, features, which API, and the injected bad id if any."""

    seed: int
    tables: list[tuple[np.ndarray, str]]
    features: dict[str, Feature]
    api: str
    bad_id: int | None = None


# ---------------------------------------------------------------------------------------------
# Random cases


def _id_dtype(rng: np.random.Generator) -> type[np.integer[Any]]:
    """int32 or int64, at random: both must behave the same."""
    return np.int32 if rng.random() < 0.5 else np.int64


def _batch(rng: np.random.Generator, high: int) -> int:
    """A batch size in [1, high), or (one time in ten) an empty batch."""
    return 0 if rng.random() < 0.1 else int(rng.integers(1, high))


def _sparse(rng: np.random.Generator, f: Feature, vocab: int, rank: int) -> None:
    """Sorted (row-major) entries: the plain path needs sorted rows; the others don't care."""
    batch = _batch(rng, 5)
    inner = [int(rng.integers(1, 3)) for _ in range(rank - 2)]
    width = int(rng.integers(1, 6))
    shape = [width] if rank == 1 else [batch, *inner, width]
    lead = [()] if rank == 1 else list(np.ndindex(*shape[:-1]))
    idx: list[list[int]] = []
    for prefix in lead:
        count = int(rng.integers(0, width + 1))
        for col in sorted(rng.choice(width, size=count, replace=False).tolist()):
            idx.append([*prefix, col])
    f.indices = np.array(idx, dtype=np.int64).reshape(-1, rank)
    ids = rng.integers(0, vocab, len(idx))
    sequence = f.max_sequence_length > 0 and rank == 2 and f.output_shape is None
    validated = not sequence and (f.validate or rank >= 3)
    if validated and len(idx) and rng.random() < 0.3:
        ids[rng.integers(0, len(idx))] = -1  # dropped on the validated combining path
    f.values = ids.astype(_id_dtype(rng))
    f.dense_shape = shape
    if f.max_sequence_length == 0 and rng.random() < 0.6:
        w = np.round(rng.uniform(0.1, 2.0, len(idx)), 2)
        if validated and len(idx) and rng.random() < 0.5:
            w[rng.integers(0, len(idx))] = rng.choice([0.0, -0.5])  # dropped for mean/sqrtn
        plain = not validated
        f.weights = w.astype(np.float64 if plain and rng.random() < 0.3 else np.float32)


def _ragged(rng: np.random.Generator, f: Feature, vocab: int) -> None:
    batch = _batch(rng, 6)
    lengths = rng.integers(0, 5, batch)
    f.row_splits = np.concatenate([[0], np.cumsum(lengths)]).astype(_id_dtype(rng))
    f.values = rng.integers(0, vocab, int(lengths.sum())).astype(_id_dtype(rng))
    choice = rng.integers(0, 3) if batch else 0
    if choice == 1:  # P == B: combine, then reshape
        f.output_shape = [batch // 2, 2] if batch % 2 == 0 and rng.random() < 0.5 else [batch]
    elif choice == 2:  # P = k * B: sequence of length k, then reshape
        k = int(rng.integers(2, 4))
        f.output_shape = [batch, k] if rng.random() < 0.5 else [batch * k]
    if f.max_sequence_length == 0 and rng.random() < 0.6:
        f.weights = np.round(rng.uniform(0.1, 2.0, len(f.values)), 2).astype(np.float32)


def _dense(rng: np.random.Generator, f: Feature, vocab: int) -> None:
    shape = tuple(int(d) for d in rng.integers(1, 4, int(rng.integers(0, 4))))
    if shape and rng.random() < 0.1:
        shape = (0, *shape[1:])  # an empty batch
    f.dense = rng.integers(0, vocab, shape).astype(_id_dtype(rng))
    if rng.random() < 0.3:
        f.output_shape = [7]  # ignored for dense input


def make_case(seed: int) -> Case:
    """A seeded random case with 1-3 features over 1-2 tables."""
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(int(rng.integers(1, 3))):
        vocab, dim = int(rng.integers(5, 30)), int(rng.integers(1, 6))
        values = rng.uniform(-2.0, 2.0, (vocab, dim)).astype(np.float32)
        tables.append((values, str(rng.choice(COMBINERS))))
    features: dict[str, Feature] = {}
    kinds = ("dense", "sparse", "ragged")
    for i in range(int(rng.integers(1, 4))):
        kind = kinds[(seed + i) % 3]
        f = Feature(kind=kind, table=int(rng.integers(0, len(tables))))
        vocab = tables[f.table][0].shape[0]
        f.validate = bool(rng.random() < 0.5)
        if kind == "dense":
            _dense(rng, f, vocab)
        elif kind == "sparse":
            f.max_sequence_length = int(rng.choice([0, 0, 2, 4]))
            rank = int(rng.choice([1, 2, 2, 2, 3])) if f.max_sequence_length == 0 else 2
            if f.max_sequence_length and rng.random() < 0.4:
                f.output_shape = [3]  # switches the sequence path off (TF logs a warning)
            _sparse(rng, f, vocab, rank)
        else:
            f.max_sequence_length = int(rng.choice([0, 0, 3]))
            _ragged(rng, f, vocab)
        features[f"f{i}"] = f
    case = Case(seed, tables, features, "serving" if seed % 4 == 3 else "embedding")
    if seed % 8 == 5:
        _inject_bad_id(rng, case)
    return case


def _inject_bad_id(rng: np.random.Generator, case: Case) -> None:
    """Put one out-of-range id where TF looks it up (inside the sequence window)."""
    for f in case.features.values():
        ids = f.id_array()
        if ids.size == 0:
            continue
        pos = int(rng.integers(0, ids.size))
        if f.kind == "sparse" and f.max_sequence_length and f.output_shape is None:
            assert f.indices is not None
            inside = np.flatnonzero(f.indices[:, 1] < f.max_sequence_length)
            if inside.size == 0:
                continue
            pos = int(inside[0])
        bad = case.tables[f.table][0].shape[0] + int(rng.integers(0, 3))
        ids.reshape(-1)[pos] = bad
        case.bad_id = bad
        return


# ---------------------------------------------------------------------------------------------
# Building both sides


def _tf_inputs(case: Case) -> tuple[dict[str, Any], dict[str, Any] | None]:
    feats: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    for name, f in case.features.items():
        if f.kind == "dense":
            feats[name] = tf.constant(f.dense)
        elif f.kind == "sparse":
            feats[name] = tf.SparseTensor(f.indices, tf.constant(f.values), f.dense_shape)
        else:
            feats[name] = tf.RaggedTensor.from_row_splits(
                tf.constant(f.values), tf.constant(f.row_splits)
            )
        weights[name] = None
        if f.weights is not None and f.kind == "sparse":
            weights[name] = tf.SparseTensor(f.indices, tf.constant(f.weights), f.dense_shape)
        elif f.weights is not None:
            weights[name] = tf.RaggedTensor.from_row_splits(
                tf.constant(f.weights), tf.constant(f.row_splits)
            )
    has_weights = any(w is not None for w in weights.values())
    return feats, weights if has_weights else None


def _native_inputs(case: Case) -> tuple[dict[str, Any], dict[str, Any] | None]:
    feats: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    for name, f in case.features.items():
        if f.kind == "dense":
            feats[name] = f.dense.copy()  # type: ignore[union-attr]
        elif f.kind == "sparse":
            feats[name] = es.SparseTensor(f.indices, f.values, f.dense_shape)
        else:
            feats[name] = es.RaggedTensor.from_row_splits(f.values, f.row_splits)
        weights[name] = None
        if f.weights is not None and f.kind == "sparse":
            weights[name] = es.SparseTensor(f.indices, f.weights, f.dense_shape)
        elif f.weights is not None:
            weights[name] = es.RaggedTensor.from_row_splits(f.weights, f.row_splits)
    has_weights = any(w is not None for w in weights.values())
    return feats, weights if has_weights else None


def _run_tf(case: Case, feats: Any, weights: Any) -> dict[str, np.ndarray]:
    tables = [
        TFE.TableConfig(
            v.shape[0],
            v.shape[1],
            initializer=lambda shape, dtype, v=v: tf.constant(v),
            combiner=c,
            name=f"t{i}",
        )
        for i, (v, c) in enumerate(case.tables)
    ]
    config = {
        n: TFE.FeatureConfig(
            tables[f.table],
            max_sequence_length=f.max_sequence_length,
            validate_weights_and_indices=f.validate,
            output_shape=f.output_shape,
        )
        for n, f in case.features.items()
    }
    if case.api == "serving":
        tmap = {t: tf.Variable(v) for t, (v, _) in zip(tables, case.tables, strict=True)}
        out = TFE.serving_embedding_lookup(feats, weights, tmap, config)
    else:
        out = TFE.TPUEmbeddingForServing(config, None)(feats, weights)
    return {k: v.numpy() for k, v in out.items()}


def _run_embserve(case: Case, feats: Any, weights: Any) -> Any:
    tables = [
        es.TableConfig(
            v.shape[0],
            v.shape[1],
            initializer=lambda shape, dtype=None, v=v: v.copy(),
            combiner=c,
            name=f"t{i}",
        )
        for i, (v, c) in enumerate(case.tables)
    ]
    config = {
        n: es.FeatureConfig(
            tables[f.table],
            max_sequence_length=f.max_sequence_length,
            validate_weights_and_indices=f.validate,
            output_shape=f.output_shape,
        )
        for n, f in case.features.items()
    }
    if case.api == "serving":
        tmap = {t: v.copy() for t, (v, _) in zip(tables, case.tables, strict=True)}
        return es.serving_embedding_lookup(feats, weights, tmap, config)
    return es.TPUEmbeddingForServing(config, None)(feats, weights)


def _describe(case: Case) -> str:
    parts = []
    for n, f in case.features.items():
        parts.append(
            f"{n}:{f.kind} table={f.table} L={f.max_sequence_length} validate={f.validate} "
            f"os={f.output_shape} weighted={f.weights is not None}"
        )
    combiners = [c for _, c in case.tables]
    return f"seed {case.seed} api={case.api} combiners={combiners} " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# The test


@pytest.mark.parametrize("mode", ["tf_objects", "native"])
@pytest.mark.parametrize("seed", range(N_CASES))
def test_random_case_matches_tensorflow(seed: int, mode: str) -> None:
    """TensorFlow's outputs (or bad-id error) equal embserve's, for TF and native inputs."""
    case = make_case(seed)
    what = _describe(case)
    tf_feats, tf_weights = _tf_inputs(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            want: dict[str, np.ndarray] | None = _run_tf(case, tf_feats, tf_weights)
            tf_error = None
        except tf.errors.InvalidArgumentError as e:
            want, tf_error = None, e
        feats, weights = (tf_feats, tf_weights) if mode == "tf_objects" else _native_inputs(case)
        if tf_error is not None:
            assert case.bad_id is not None, f"{what}: TF failed unexpectedly: {tf_error}"
            m = _BAD_ID.search(str(tf_error))
            assert m is not None, str(tf_error)
            with pytest.raises(es.IdOutOfRangeError) as info:
                _run_embserve(case, feats, weights)
            assert info.value.id == int(m.group(1)), what
            assert info.value.num_rows == int(m.group(2)), what
            return
        got = _run_embserve(case, feats, weights)
    assert want is not None
    assert isinstance(got, dict), what
    assert set(got) == set(want), what
    for name, expected in want.items():
        actual = got[name]
        assert isinstance(actual, np.ndarray), f"{what}: {name} is {type(actual)}"
        assert actual.dtype == expected.dtype, f"{what}: {name} dtype {actual.dtype}"
        assert actual.shape == expected.shape, (
            f"{what}: {name} shape {actual.shape}, TF {expected.shape}"
        )
        np.testing.assert_allclose(
            actual, expected, rtol=RTOL, atol=ATOL, err_msg=f"{what}: feature {name}"
        )


def test_generator_covers_the_grid() -> None:
    """The seeded cases really exercise every kind, combiner and option named in the docstring."""
    seen: set[str] = set()
    for seed in range(N_CASES):
        case = make_case(seed)
        seen.add(case.api)
        seen.update(c for _, c in case.tables)
        if case.bad_id is not None:
            seen.add("bad_id")
        for f in case.features.values():
            seen.add(f.kind)
            if f.weights is not None:
                seen.add(f"{f.kind}_weighted")
            if f.max_sequence_length:
                seen.add(f"{f.kind}_sequence")
            if f.output_shape is not None:
                seen.add(f"{f.kind}_output_shape")
            if f.kind == "sparse":
                seen.add(f"sparse_rank{len(f.dense_shape)}")
                seen.add(f"sparse_validate_{f.validate}")
    want = {
        "embedding", "serving", "sum", "mean", "sqrtn", "bad_id", "dense", "sparse", "ragged",
        "sparse_weighted", "ragged_weighted", "sparse_sequence", "ragged_sequence",
        "ragged_output_shape", "sparse_output_shape", "sparse_rank1", "sparse_rank2",
        "sparse_rank3", "sparse_validate_True", "sparse_validate_False",
    }  # fmt: skip
    assert want <= seen, sorted(want - seen)
